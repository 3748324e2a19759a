package main

import (
	"crypto/x509"
	"encoding/pem"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
)

// idpClaims are the claims of an identity provider's token for uid.
func idpClaims(uid string) jwt.MapClaims {
	return jwt.MapClaims{
		"sub": uid, "iss": "https://idp.example/realms/app", "aud": []string{"account", "pusher"},
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
	}
}

// with returns c with more claims (nil values removed).
func with(c jwt.MapClaims, more jwt.MapClaims) jwt.MapClaims {
	out := jwt.MapClaims{}
	maps.Copy(out, c)
	for k, v := range more {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// startIDPServer starts a server that accepts the tokens of an identity
// provider (issuer, audience, sub as the uid) beside JWT_SECRET's.
func startIDPServer(t *testing.T, jwksURL string, args ...string) *testServer {
	t.Helper()
	return startServer(t, testConfig(t, append([]string{
		"-internal-addr", "127.0.0.1:0", "-jwks-url", jwksURL,
		"-jwt-issuer", "https://idp.example/realms/app", "-jwt-audience", "pusher", "-jwt-uid-claim", "sub",
	}, args...)...))
}

// wantRefusal dials with token and wants the article's refusal: the
// reason as text, then 1008, and nothing registered.
func wantRefusal(t *testing.T, ts *testServer, token, reason string) {
	t.Helper()
	conn := ts.dialRaw("/ws?token="+url.QueryEscape(token), nil)
	if got, want := readText(t, conn), "authenticate error: "+reason; got != want {
		t.Errorf("first message = %q, want %q", got, want)
	}
	if ce := readClose(t, conn); ce.Code != websocket.ClosePolicyViolation {
		t.Errorf("close code = %d, want 1008", ce.Code)
	}
}

// TestIdentityProviderTokens: tokens signed with the keys of a JWKS are
// accepted (RS256 and ES256, by kid), with iss, aud and the uid claim
// checked; JWT_SECRET's tokens still work; alg none, an HS256 token
// signed with the provider's public key, and a key the JWKS does not
// have are refused.
func TestIdentityProviderTokens(t *testing.T) {
	rs := testutil.NewSigningKey(t, "rs-1", jwt.SigningMethodRS256)
	es := testutil.NewSigningKey(t, "es-1", jwt.SigningMethodES256)
	idp := testutil.StartJWKSServer(t, rs, es)
	ts := startIDPServer(t, idp.URL())
	waitFor(t, "ready", func() bool { code, _ := ts.readyz(); return code == http.StatusOK })

	for _, k := range []testutil.SigningKey{rs, es} {
		uid := "alice-" + k.Method.Alg()
		conn := ts.dialRaw("/ws?token="+url.QueryEscape(k.Sign(t, idpClaims(uid))), nil)
		waitFor(t, uid+" registered", func() bool { return len(ts.hub.clients(uid)) == 1 })
		ts.sendOK(uid, "hello "+uid)
		if got := readText(t, conn); got != "hello "+uid {
			t.Errorf("got %q", got)
		}
	}
	hs := signed(t, jwt.SigningMethodHS256, []byte(testSecret), idpClaims("bob")) // iss and aud hold for every token
	ts.dialRaw("/ws?token="+hs, nil)
	waitFor(t, "bob (JWT_SECRET, sub) registered", func() bool { return len(ts.hub.clients("bob")) == 1 })

	der, err := x509.MarshalPKIXPublicKey(rs.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	publicPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, idpClaims("mallory"))
	confused.Header["kid"] = rs.KID
	confusedToken, err := confused.SignedString(publicPEM)
	if err != nil {
		t.Fatal(err)
	}
	stranger := testutil.NewSigningKey(t, "rs-1", jwt.SigningMethodRS256) // the kid of the set, another key
	unknown := testutil.NewSigningKey(t, "rs-9", jwt.SigningMethodRS256)
	for _, tt := range []struct{ name, token, reason string }{
		{"other issuer", rs.Sign(t, with(idpClaims("m"), jwt.MapClaims{"iss": "https://evil.example"})), "token issuer is not accepted"},
		{"no issuer", rs.Sign(t, with(idpClaims("m"), jwt.MapClaims{"iss": nil})), "token lacks its iss or aud claim"},
		{"no audience", rs.Sign(t, with(idpClaims("m"), jwt.MapClaims{"aud": nil})), "token lacks its iss or aud claim"},
		{"other audience", rs.Sign(t, with(idpClaims("m"), jwt.MapClaims{"aud": "account"})), "token audience is not accepted"},
		{"no sub", rs.Sign(t, with(idpClaims("m"), jwt.MapClaims{"sub": nil, "uid": "m"})), "token has no string sub claim"},
		{"expired", rs.Sign(t, with(idpClaims("m"), jwt.MapClaims{"exp": time.Now().Add(-time.Minute).Unix()})), "token is expired"},
		{"alg none", signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, idpClaims("m")), "token signature is invalid"},
		{"HS256 with the public key", confusedToken, "token signature is invalid"},
		{"another key, same kid", stranger.Sign(t, idpClaims("m")), "token signature is invalid"},
		{"a kid the JWKS lacks", unknown.Sign(t, idpClaims("m")), "token signature is invalid"},
		{"no kid", signed(t, jwt.SigningMethodRS256, rs.Key, idpClaims("m")), "token signature is invalid"},
	} {
		t.Run(tt.name, func(t *testing.T) { wantRefusal(t, ts, tt.token, tt.reason) })
	}
	if n := len(ts.hub.clients("m")) + len(ts.hub.clients("mallory")); n != 0 {
		t.Errorf("%d refused connections registered", n)
	}
}

// TestJWKSUnreachableAtStart: the server starts without its JWKS;
// /readyz is 503 naming it until a retry fetches it, and then tokens of
// its keys are accepted.
func TestJWKSUnreachableAtStart(t *testing.T) {
	key := testutil.NewSigningKey(t, "ed-1", jwt.SigningMethodEdDSA)
	idp := testutil.StartJWKSServer(t, key)
	idp.SetBody(nil) // 500s
	ts := startIDPServer(t, idp.URL())
	waitFor(t, "a fetch tried", func() bool { return idp.Requests.Load() >= 1 })
	code, body := ts.readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, idp.URL()) {
		t.Errorf("/readyz with the JWKS down = %d %q, want 503 naming %s", code, body, idp.URL())
	}
	idp.SetKeys(t, key)
	waitFor(t, "ready after a retry", func() bool { code, _ := ts.readyz(); return code == http.StatusOK })
	ts.dialRaw("/ws?token="+url.QueryEscape(key.Sign(t, idpClaims("erin"))), nil)
	waitFor(t, "erin (EdDSA) registered", func() bool { return len(ts.hub.clients("erin")) == 1 })
}

// TestJWKSWithoutSecret: with a JWKS and no JWT_SECRET the server starts
// and refuses HS* tokens; without either it does not start; a JWKS URL
// in the clear off loopback is refused.
func TestJWKSWithoutSecret(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	_, err := parseConfig([]string{"-jwks-url", "https://idp.example/jwks.json"}, env(map[string]string{"PUSHER_API_KEY": testAPIKey}))
	if err != nil {
		t.Errorf("a JWKS without JWT_SECRET: %v", err)
	}
	_, err = parseConfig(nil, env(map[string]string{"PUSHER_API_KEY": testAPIKey}))
	if err == nil || !strings.Contains(err.Error(), "JWT_SECRET or -jwks-url") {
		t.Errorf("neither JWT_SECRET nor a JWKS: %v", err)
	}
	for _, u := range []string{"http://idp.example/jwks.json", "ftp://idp.example/jwks", "not a url"} {
		_, err := parseConfig([]string{"-jwks-url", u}, env(map[string]string{"PUSHER_API_KEY": testAPIKey, "JWT_SECRET": testSecret}))
		if err == nil || !strings.Contains(err.Error(), "-jwks-url") {
			t.Errorf("-jwks-url %q: %v, want refused", u, err)
		}
	}

	key := testutil.NewSigningKey(t, "es-1", jwt.SigningMethodES256)
	idp := testutil.StartJWKSServer(t, key)
	cfg, err := parseConfig([]string{"-addr", "127.0.0.1:0", "-message-log", "none", "-jwks-url", idp.URL()},
		env(map[string]string{"PUSHER_API_KEY": testAPIKey}))
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, cfg)
	wantRefusal(t, ts, signed(t, jwt.SigningMethodHS256, []byte(""), jwt.MapClaims{"uid": "u"}), "token signature is invalid")
	wantRefusal(t, ts, signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": "u"}), "token signature is invalid")
	ts.dialRaw("/ws?token="+url.QueryEscape(key.Sign(t, jwt.MapClaims{"uid": "u"})), nil)
	waitFor(t, "u registered", func() bool { return len(ts.hub.clients("u")) == 1 })
}
