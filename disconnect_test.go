package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
)

// disconnect posts a /disconnect body and returns its answer.
func (ts *testServer) disconnect(body string) (int, string) {
	ts.t.Helper()
	code, _, b := ts.post("/disconnect", "application/json", body, nil)
	return code, b
}

// tokenAt is an HS256 token of uid issued at iat.
func tokenAt(t *testing.T, uid string, iat time.Time) string {
	t.Helper()
	return signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": uid, "iat": iat.Unix(), "exp": time.Now().Add(time.Hour).Unix()})
}

// TestDisconnect: every connection of the uids is closed with 1008 and
// the reason, the others are not touched; the answer lists the uids by
// outcome; pusher_disconnects_total counts the connections.
func TestDisconnect(t *testing.T) {
	ts := startServer(t, testConfig(t))
	a1, a2 := ts.dial("a"), ts.dialStream("a", "format=json")
	b := ts.dial("b")
	code, body := ts.disconnect(`{"uids":["a","zz"],"reason":"account closed"}`)
	if code != http.StatusOK || body != `{"disconnected":["a"],"not_found":["zz"]}`+"\n" {
		t.Fatalf("/disconnect = %d %q", code, body)
	}
	for _, c := range []*websocket.Conn{a1, a2} {
		wantClose(t, c, websocket.ClosePolicyViolation, "account closed")
	}
	ts.sendOK("b", "still here")
	if got := readText(t, b); got != "still here" {
		t.Errorf("b got %q", got)
	}
	if got := ts.metric("pusher_disconnects_total"); got != 2 {
		t.Errorf("pusher_disconnects_total = %v, want 2", got)
	}
	if code, body := ts.disconnect(`{"uid":"b"}`); code != http.StatusOK || !strings.Contains(body, `"disconnected":["b"]`) {
		t.Fatalf("/disconnect b = %d %q", code, body)
	}
	wantClose(t, b, websocket.ClosePolicyViolation, "disconnected")
	// Not revoked: the same token connects again.
	ts.dial("a")
}

// TestDisconnectBadInput: each bad request gets a clear 4xx and closes
// nothing.
func TestDisconnectBadInput(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u")
	for _, tt := range []struct {
		name, contentType, body string
		code                    int
		reason                  string
	}{
		{"form", "application/x-www-form-urlencoded", "uid=u", http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
		{"no uid", "application/json", `{"reason":"x"}`, http.StatusBadRequest, "uid is required"},
		{"both", "application/json", `{"uid":"u","uids":["u"]}`, http.StatusBadRequest, "give uid or uids, not both"},
		{"empty uids", "application/json", `{"uids":[]}`, http.StatusBadRequest, "uids is empty"},
		{"unknown member", "application/json", `{"uid":"u","revok":true}`, http.StatusBadRequest, "revok"},
		{"long reason", "application/json", `{"uid":"u","reason":"` + strings.Repeat("r", 101) + `"}`, http.StatusBadRequest, "reason longer than 100 bytes"},
		{"empty reason", "application/json", `{"uid":"u","reason":""}`, http.StatusBadRequest, "reason is empty"},
		{"control in reason", "application/json", `{"uid":"u","reason":"a\nb"}`, http.StatusBadRequest, "control character"},
		{"revoke not a bool", "application/json", `{"uid":"u","revoke":"yes"}`, http.StatusBadRequest, "revoke"},
		{"bad uid", "application/json", `{"uid":""}`, http.StatusBadRequest, "uid is empty"},
	} {
		code, _, body := ts.post("/disconnect", tt.contentType, tt.body, nil)
		if code != tt.code || !strings.Contains(body, tt.reason) {
			t.Errorf("%s: %d %q, want %d with %q", tt.name, code, body, tt.code, tt.reason)
		}
	}
	if code, _ := ts.do(http.MethodPost, "/disconnect", "application/json", `{"uid":"u"}`, "Bearer wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong API key = %d, want 401", code)
	}
	if code, _ := ts.do(http.MethodGet, "/disconnect", "", "", "Bearer "+testAPIKey); code != http.StatusMethodNotAllowed {
		t.Errorf("GET = %d, want 405", code)
	}
	ts.sendOK("u", "untouched")
	if got := readText(t, conn); got != "untouched" {
		t.Errorf("got %q", got)
	}
}

// TestRevoke: with revoke, the uid's tokens issued at or before the
// revocation's second are refused at connect and at refresh; a token
// issued after connects.
func TestRevoke(t *testing.T) {
	ts := startServer(t, testConfig(t))
	before := time.Now().Add(-time.Minute)
	conn := ts.dialRaw("/ws?format=json&token="+url.QueryEscape(tokenAt(t, "v", before)), nil)
	waitFor(t, "v registered", func() bool { return len(ts.hub.clients("v")) == 1 })
	if code, body := ts.disconnect(`{"uid":"v","revoke":true,"reason":"revoked"}`); code != http.StatusOK || !strings.Contains(body, `"disconnected":["v"]`) {
		t.Fatalf("/disconnect = %d %q", code, body)
	}
	wantClose(t, conn, websocket.ClosePolicyViolation, "revoked")
	wantRefusal(t, ts, tokenAt(t, "v", before), "token revoked")
	wantRefusal(t, ts, signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": "v"}), "token revoked") // no iat
	later := time.Now().Add(time.Second)
	fresh := ts.dialRaw("/ws?format=json&token="+url.QueryEscape(tokenAt(t, "v", later)), nil)
	waitFor(t, "v registered with a token issued after", func() bool { return len(ts.hub.clients("v")) == 1 })
	a := sendRefresh(t, fresh, refreshOf(tokenAt(t, "v", before)))
	if *a.Refreshed || a.Error != "token revoked" {
		t.Errorf("refresh with a revoked token: %+v", a)
	}
	// Another uid's tokens are not revoked.
	ts.dialRaw("/ws?token="+url.QueryEscape(tokenAt(t, "w", before)), nil)
	waitFor(t, "w registered", func() bool { return len(ts.hub.clients("w")) == 1 })
}

// TestClusterDisconnect: /disconnect on one node closes the uid's
// connections on every node, and its revocation holds on every node; on
// a single Redis and on a Redis Cluster.
func TestClusterDisconnect(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		before := time.Now().Add(-time.Minute)
		onA := a.dialRaw("/ws?token="+url.QueryEscape(tokenAt(t, "x", before)), nil)
		waitFor(t, "x on a", func() bool { return len(a.hub.clients("x")) == 1 })
		onB := dialSubscribed(t, b, "y", a)
		waitFor(t, "x seen from b", func() bool {
			on, _, err := b.broker.Online(t.Context(), []string{"x"})
			return err == nil && len(on) == 1
		})
		code, body := b.disconnect(`{"uids":["x","nobody"],"revoke":true,"reason":"banned"}`)
		if code != http.StatusOK || body != `{"disconnected":["x"],"not_found":["nobody"]}`+"\n" {
			t.Fatalf("/disconnect on b = %d %q", code, body)
		}
		wantClose(t, onA, websocket.ClosePolicyViolation, "banned")
		for _, ts := range nodes {
			wantRefusal(t, ts, tokenAt(t, "x", before), "token revoked")
		}
		a.sendOK("y", "untouched")
		if got := readText(t, onB); got != "untouched" {
			t.Errorf("y got %q", got)
		}
		if got := a.metric("pusher_disconnects_total"); got != 1 {
			t.Errorf("pusher_disconnects_total on a = %v, want 1", got)
		}
	})
}
