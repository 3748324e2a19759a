package main

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// refreshAnswer is the server's answer to {"refresh": ...}.
type refreshAnswer struct {
	Refreshed *bool  `json:"refreshed"`
	Exp       *int64 `json:"exp"`
	Error     string `json:"error"`
}

// sendRefresh sends the refresh of token and reads the answer.
func sendRefresh(t *testing.T, conn *websocket.Conn, frame string) refreshAnswer {
	t.Helper()
	if err := conn.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatal(err)
	}
	raw := readText(t, conn)
	var a refreshAnswer
	if err := json.Unmarshal([]byte(raw), &a); err != nil || a.Refreshed == nil {
		t.Fatalf("answer %q: not a refresh answer (%v)", raw, err)
	}
	return a
}

func refreshOf(token string) string {
	b, _ := json.Marshal(map[string]string{"refresh": token})
	return string(b)
}

// dialExpiring connects uid with format=json on a token that expires at
// exp (whole seconds, as JWTs say).
func dialExpiring(t *testing.T, ts *testServer, uid string, exp time.Time) *websocket.Conn {
	t.Helper()
	tok := signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": uid, "exp": exp.Unix()})
	conn := ts.dialRaw("/ws?format=json&token="+url.QueryEscape(tok), nil)
	waitFor(t, uid+" registered", func() bool { return len(ts.hub.clients(uid)) == 1 })
	return conn
}

// TestRefreshMovesTheExpiry: a format=json connection that refreshes its
// token outlives the first token's exp, and is closed at the new one's.
func TestRefreshMovesTheExpiry(t *testing.T) {
	ts := startServer(t, testConfig(t))
	first := time.Now().Add(2 * time.Second).Truncate(time.Second)
	conn := dialExpiring(t, ts, "r", first)
	second := first.Add(2 * time.Second)
	a := sendRefresh(t, conn, refreshOf(signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": "r", "exp": second.Unix()})))
	if !*a.Refreshed || a.Exp == nil || *a.Exp != second.Unix() {
		t.Fatalf("refresh answer %+v, want refreshed with exp %d", a, second.Unix())
	}
	time.Sleep(time.Until(first.Add(500 * time.Millisecond))) // past the first token's exp: the point of the test
	ts.sendOK("r", "still here")
	if f := readFrame(t, conn); f.Message != "still here" {
		t.Fatalf("after the first exp: %+v", f)
	}
	wantClose(t, conn, websocket.ClosePolicyViolation, "token expired")
	if late := time.Now(); late.Before(second) {
		t.Errorf("closed at %s, before the refreshed exp %s", late.Format(time.RFC3339Nano), second.Format(time.RFC3339Nano))
	}
}

// TestRefreshRefused: a refresh with a bad token, another uid's, or not
// a string is answered refreshed false with the reason, and the old
// expiry stands; frames that are not refreshes, malformed or unknown,
// are ignored; none of them disturbs delivery. A refresh without an exp
// makes the connection last.
func TestRefreshRefused(t *testing.T) {
	ts := startServer(t, testConfig(t))
	exp := time.Now().Add(3 * time.Second).Truncate(time.Second)
	conn := dialExpiring(t, ts, "q", exp)
	for _, tt := range []struct{ name, frame, reason string }{
		{"another uid", refreshOf(ts.token("other", time.Hour)), "token is for another uid"},
		{"expired", refreshOf(signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": "q", "exp": time.Now().Add(-time.Minute).Unix()})), "token is expired"},
		{"wrong secret", refreshOf(signed(t, jwt.SigningMethodHS256, []byte("other"), jwt.MapClaims{"uid": "q"})), "token signature is invalid"},
		{"garbage", refreshOf("x.y.z"), "token is malformed"},
		{"not a string", `{"refresh": 42}`, "refresh: want the token as a string"},
	} {
		a := sendRefresh(t, conn, tt.frame)
		if *a.Refreshed || a.Error != tt.reason {
			t.Errorf("%s: %+v, want refreshed false, %q", tt.name, a, tt.reason)
		}
	}
	for _, frame := range []string{`{"subscribe": "x"}`, `{"refresh"`, `[1,2]`, strings.Repeat("a", maxJSONReadSize)} {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			t.Fatal(err)
		}
	}
	ts.sendOK("q", "delivered")
	if f := readFrame(t, conn); f.Message != "delivered" {
		t.Fatalf("after refused refreshes and ignored frames: %+v", f)
	}
	wantClose(t, conn, websocket.ClosePolicyViolation, "token expired")
	if late := time.Now(); late.Before(exp) {
		t.Errorf("closed at %s, before the token's exp %s", late.Format(time.RFC3339Nano), exp.Format(time.RFC3339Nano))
	}

	forever := dialExpiring(t, ts, "f", time.Now().Add(time.Hour))
	a := sendRefresh(t, forever, refreshOf(ts.token("f", 0)))
	if !*a.Refreshed || a.Exp != nil {
		t.Errorf("a refresh without exp: %+v, want refreshed with exp null", a)
	}
}

// TestJSONFrameLimit: format=json clients may send 8 KiB (identity
// providers' tokens are large), one byte more is 1009; raw connections
// keep 512 bytes.
func TestJSONFrameLimit(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dialStream("j", "format=json")
	if err := conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("a", maxJSONReadSize+1))); err != nil {
		t.Fatal(err)
	}
	wantClose(t, conn, websocket.CloseMessageTooBig, "message too big")
	raw := ts.dial("k")
	if err := raw.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("a", maxReadSize+1))); err != nil {
		t.Fatal(err)
	}
	wantClose(t, raw, websocket.CloseMessageTooBig, "message too big")
}

// TestRefreshAnswersTakeNoQueueSlot: a refresh's answer is a control
// frame; many more refreshes than -send-buffer leave the connection's
// queue empty and delivery working.
func TestRefreshAnswersTakeNoQueueSlot(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "4"))
	conn := ts.dialStream("s", "format=json")
	for range 10 {
		if a := sendRefresh(t, conn, `{"refresh": 42}`); *a.Refreshed {
			t.Fatalf("%+v", a)
		}
	}
	ts.sendOK("s", "after ten refreshes")
	if f := readFrame(t, conn); f.Message != "after ten refreshes" {
		t.Fatalf("got %+v", f)
	}
}
