package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"go-pusher/internal/stream"
)

func TestParseToken(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := NewJWTAuthenticator(testSecret, func() time.Time { return now })
	key := []byte(testSecret)
	tests := []struct {
		name    string
		claims  jwt.MapClaims
		method  jwt.SigningMethod
		wantUID string
		wantExp time.Time
		reason  string
	}{
		{"plain", jwt.MapClaims{"uid": "alice"}, jwt.SigningMethodHS256, "alice", time.Time{}, ""},
		{"with exp", jwt.MapClaims{"uid": "a", "exp": now.Add(time.Hour).Unix()}, jwt.SigningMethodHS384, "a", now.Add(time.Hour), ""},
		{"nbf passed", jwt.MapClaims{"uid": "a", "nbf": now.Add(-time.Hour).Unix()}, jwt.SigningMethodHS512, "a", time.Time{}, ""},
		{"utf8 uid", jwt.MapClaims{"uid": "用户"}, jwt.SigningMethodHS256, "用户", time.Time{}, ""},
		{"128 bytes", jwt.MapClaims{"uid": strings.Repeat("u", 128)}, jwt.SigningMethodHS256, strings.Repeat("u", 128), time.Time{}, ""},
		{"expired", jwt.MapClaims{"uid": "a", "exp": now.Add(-time.Second).Unix()}, jwt.SigningMethodHS256, "", time.Time{}, "token is expired"},
		{"future nbf", jwt.MapClaims{"uid": "a", "nbf": now.Add(time.Minute).Unix()}, jwt.SigningMethodHS256, "", time.Time{}, "token is not valid yet"},
		{"bool uid", jwt.MapClaims{"uid": true}, jwt.SigningMethodHS256, "", time.Time{}, "token has no string uid claim"},
		{"string exp", jwt.MapClaims{"uid": "a", "exp": "tomorrow"}, jwt.SigningMethodHS256, "", time.Time{}, "token is malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := jwt.NewWithClaims(tt.method, tt.claims).SignedString(key)
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.ParseToken(tok)
			if tt.reason != "" {
				if err == nil || err.Error() != tt.reason {
					t.Fatalf("ParseToken() error = %v, want %q", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseToken() error = %v", err)
			}
			if id.UID != tt.wantUID || !id.ExpiresAt.Equal(tt.wantExp) {
				t.Errorf("ParseToken() = %+v, want uid %q exp %v", id, tt.wantUID, tt.wantExp)
			}
		})
	}
}

func TestAuthenticateTokenSources(t *testing.T) {
	a := NewJWTAuthenticator(testSecret, time.Now)
	tok, err := IssueToken(testSecret, "q", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, target, header string
	}{
		{"query", "/ws?token=" + tok, ""},
		{"bearer", "/ws", "Bearer " + tok},
		{"bearer lower case", "/ws", "bearer " + tok},
		{"query wins", "/ws?token=" + tok, "Bearer garbage"},
	} {
		r := httptest.NewRequest(http.MethodGet, tt.target, nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		if id, err := a.Authenticate(r); err != nil || id.UID != "q" {
			t.Errorf("%s: Authenticate() = %+v, %v", tt.name, id, err)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Authorization", "Basic "+tok)
	_, err = a.Authenticate(r)
	var ae *authError
	if !errors.As(err, &ae) || ae.Metric != authMissingToken {
		t.Errorf("Basic credentials: Authenticate() error = %v, want missing token", err)
	}
}

// FuzzParseToken: no input panics the parser, and whatever it accepts
// names a valid uid.
func FuzzParseToken(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	good, _ := IssueToken(testSecret, "alice", time.Hour, now)
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.eyJ1aWQiOiJ1In0.")
	a := NewJWTAuthenticator(testSecret, func() time.Time { return now })
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := a.ParseToken(tok)
		if err != nil {
			var ae *authError
			if !errors.As(err, &ae) || ae.Reason == "" {
				t.Fatalf("ParseToken(%q) error %v is not an authError with a reason", tok, err)
			}
			return
		}
		if err := stream.CheckUID(id.UID); err != nil {
			t.Fatalf("ParseToken(%q) accepted uid %q: %v", tok, id.UID, err)
		}
	})
}

// TestTokenUIDWithControlCharacters: a uid with a control character in
// a token is refused like a bad token (it would end up in log lines and
// Redis keys as something else).
func TestTokenUIDWithControlCharacters(t *testing.T) {
	a := NewJWTAuthenticator(testSecret, time.Now)
	for _, uid := range []string{"a\nb", "\x1b[31mred", "tab\there", "del\x7f", "c1\u0085"} {
		tok := signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": uid})
		if _, err := a.ParseToken(tok); err == nil || !strings.Contains(err.Error(), "control character") {
			t.Errorf("ParseToken(uid %q) = %v, want a refusal naming the control character", uid, err)
		}
	}
}

func TestOriginAllowed(t *testing.T) {
	allowed := []string{"https://app.example.com", "http://localhost:3000", "https://*.example.org"}
	for _, tt := range []struct {
		origin string
		want   bool
	}{
		{"", true},
		{"https://app.example.com", true},
		{"http://localhost:3000", true},
		{"http://localhost:3001", false},
		{"https://x.example.org", true},
		{"https://a.b.example.org", true},
		{"https://example.org", false},
		{"https://xexample.org", false},
		{"http://x.example.org", false},
		{"https://evil.com/.example.org", false},
		{"https://user@x.example.org", false},
		{"null", false},
	} {
		if got := originAllowed(allowed, tt.origin); got != tt.want {
			t.Errorf("originAllowed(%q) = %v, want %v", tt.origin, got, tt.want)
		}
	}
	if !originAllowed([]string{"*"}, "https://anything") {
		t.Error("* does not allow every origin")
	}
}
