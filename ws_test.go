package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
	"go-pusher/message"
)

func TestDeliverToConnectedUser(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("alice")
	id := ts.sendOK("alice", "hello, 世界")
	if got := readText(t, conn); got != "hello, 世界" {
		t.Fatalf("got %q, want %q", got, "hello, 世界")
	}
	waitFor(t, "delivered status", func() bool {
		s, _ := ts.msgLog.status(id, "alice")
		return s == message.StatusDelivered
	})
	waitFor(t, "pending back to 0", func() bool { return ts.hub.Pending() == 0 })
}

func TestTokenFromAuthorizationHeader(t *testing.T) {
	ts := startServer(t, testConfig(t))
	h := http.Header{"Authorization": {"Bearer " + ts.token("bob", time.Hour)}}
	conn := ts.dialRaw("/ws", h)
	waitFor(t, "bob registered", func() bool { return len(ts.hub.clients("bob")) == 1 })
	ts.sendOK("bob", "via header")
	if got := readText(t, conn); got != "via header" {
		t.Fatalf("got %q, want %q", got, "via header")
	}
}

func signed(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBadTokensRefused: every bad token gets the article's text message,
// then close 1008, and is never registered.
func TestBadTokensRefused(t *testing.T) {
	ts := startServer(t, testConfig(t))
	secret := []byte(testSecret)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	long := strings.Repeat("x", stream.MaxUIDLen+1)
	tests := []struct {
		name, query, reason, metric string
	}{
		{"missing", "", "token is missing", authMissingToken},
		{"garbage", "token=not.a.jwt", "token is malformed", authInvalidToken},
		{"wrong secret", "token=" + signed(t, jwt.SigningMethodHS256, []byte("other"), jwt.MapClaims{"uid": "u"}), "token signature is invalid", authInvalidToken},
		{"alg none", "token=" + signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"uid": "u"}), "token signature is invalid", authInvalidToken},
		{"RS256", "token=" + signed(t, jwt.SigningMethodRS256, rsaKey, jwt.MapClaims{"uid": "u"}), "token signature is invalid", authInvalidToken},
		{"ES256", "token=" + signed(t, jwt.SigningMethodES256, ecKey, jwt.MapClaims{"uid": "u"}), "token signature is invalid", authInvalidToken},
		{"no uid", "token=" + signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u"}), "token has no string uid claim", authInvalidToken},
		{"numeric uid", "token=" + signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"uid": 42}), "token has no string uid claim", authInvalidToken},
		{"empty uid", "token=" + signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"uid": ""}), "token uid claim is empty", authInvalidToken},
		{"long uid", "token=" + signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"uid": long}), fmt.Sprintf("token uid claim is longer than %d bytes", stream.MaxUIDLen), authInvalidToken},
		{"expired", "token=" + signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"uid": "u", "exp": now.Add(-time.Minute).Unix()}), "token is expired", authTokenExpired},
		{"not yet valid", "token=" + signed(t, jwt.SigningMethodHS512, secret, jwt.MapClaims{"uid": "u", "nbf": now.Add(time.Hour).Unix()}), "token is not valid yet", authInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.Counter(t, ts.metrics.authFailures.WithLabelValues(tt.metric))
			conn := ts.dialRaw("/ws?"+tt.query, nil)
			if got, want := readText(t, conn), "authenticate error: "+tt.reason; got != want {
				t.Errorf("first message = %q, want %q", got, want)
			}
			if ce := readClose(t, conn); ce.Code != websocket.ClosePolicyViolation {
				t.Errorf("close code = %d, want 1008", ce.Code)
			}
			if n := ts.hub.Connections(); n != 0 {
				t.Errorf("connections = %d, want 0", n)
			}
			if after := testutil.Counter(t, ts.metrics.authFailures.WithLabelValues(tt.metric)); after != before+1 {
				t.Errorf("pusher_auth_failures_total{reason=%q} = %v, want %v", tt.metric, after, before+1)
			}
		})
	}
}

func TestHS384And512Accepted(t *testing.T) {
	ts := startServer(t, testConfig(t))
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		tok := signed(t, m, []byte(testSecret), jwt.MapClaims{"uid": "u-" + m.Alg()})
		ts.dialRaw("/ws?token="+tok, nil)
		waitFor(t, m.Alg()+" connection registered", func() bool { return len(ts.hub.clients("u-"+m.Alg())) == 1 })
	}
}

func TestOriginAllowList(t *testing.T) {
	ts := startServer(t, testConfig(t, "-allowed-origins", "https://app.example.com, https://*.example.org"))
	tok := url.QueryEscape(ts.token("o", time.Hour))
	tests := []struct {
		origin string
		ok     bool
	}{
		{"", true}, // not a browser: the token decides
		{"https://app.example.com", true},
		{"HTTPS://APP.EXAMPLE.COM", true},
		{"https://a.example.org", true},
		{"https://example.org", false},
		{"https://evil.com", false},
		{"http://app.example.com", false},
		{"https://app.example.com.evil.com", false},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.origin != "" {
			h.Set("Origin", tt.origin)
		}
		conn, resp, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr()+"/ws?token="+tok, h)
		if tt.ok {
			if err != nil {
				t.Errorf("origin %q: dial error %v, want success", tt.origin, err)
				continue
			}
			conn.Close()
			continue
		}
		if err == nil {
			conn.Close()
			t.Errorf("origin %q: connected, want 403", tt.origin)
			continue
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("origin %q: response %v, want 403", tt.origin, resp)
		}
	}
	if n := testutil.Counter(t, ts.metrics.authFailures.WithLabelValues(authOrigin)); n != 4 {
		t.Errorf("pusher_auth_failures_total{reason=origin} = %v, want 4", n)
	}
}

func TestConnectionLimitPerUser(t *testing.T) {
	ts := startServer(t, testConfig(t, "-max-conns-per-user", "2"))
	a, b := ts.dial("u"), ts.dial("u")
	extra := ts.dialRaw("/ws?token="+ts.token("u", time.Hour), nil)
	wantClose(t, extra, websocket.ClosePolicyViolation, "connection limit")
	if n := len(ts.hub.clients("u")); n != 2 {
		t.Fatalf("connections of u = %d, want 2", n)
	}
	ts.sendOK("u", "still both")
	for _, c := range []*websocket.Conn{a, b} {
		if got := readText(t, c); got != "still both" {
			t.Errorf("got %q, want %q", got, "still both")
		}
	}
	// Another uid is not limited by u's connections.
	ts.dial("v")
}

// TestEveryConnectionGetsEveryMessageInOrder: several connections of a
// uid each get every message once, in /send order.
func TestEveryConnectionGetsEveryMessageInOrder(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conns := []*websocket.Conn{ts.dial("u"), ts.dial("u"), ts.dial("u")}
	const n = 300
	for i := range n {
		ts.sendOK("u", fmt.Sprintf("m%d", i))
	}
	for ci, c := range conns {
		for i := range n {
			if got, want := readText(t, c), fmt.Sprintf("m%d", i); got != want {
				t.Fatalf("connection %d message %d = %q, want %q", ci, i, got, want)
			}
		}
	}
	waitFor(t, "pending back to 0", func() bool { return ts.hub.Pending() == 0 })
	if got := testutil.Counter(t, ts.metrics.sent); got != 3*n {
		t.Errorf("pusher_messages_sent_total = %v, want %d", got, 3*n)
	}
}

// TestEachMessageIsOneFrame: messages are never joined into one frame (as
// the gorilla chat example does) nor split, whatever their size.
func TestEachMessageIsOneFrame(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u")
	msgs := []string{"a", "b\nc", strings.Repeat("é", 30000), "d"}
	for _, m := range msgs {
		ts.sendOK("u", m)
	}
	for i, want := range msgs {
		if got := readText(t, conn); got != want {
			t.Fatalf("message %d: got %d bytes, want %d", i, len(got), len(want))
		}
	}
}

func TestClientMessagesDiscardedAndReadLimit(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u")
	if err := conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", maxReadSize))); err != nil {
		t.Fatal(err)
	}
	ts.sendOK("u", "after 512")
	if got := readText(t, conn); got != "after 512" {
		t.Fatalf("got %q, want %q", got, "after 512")
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", maxReadSize+1))); err != nil {
		t.Fatal(err)
	}
	if ce := readClose(t, conn); ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("close code = %d, want 1009", ce.Code)
	}
	waitFor(t, "u unregistered", func() bool { return ts.hub.Connections() == 0 })
}

func TestServerPingsAndAnswersPings(t *testing.T) {
	ts := startServer(t, testConfig(t, "-ping-interval", "20ms", "-pong-wait", "1s"))
	conn := ts.dial("u")
	pings := make(chan struct{}, 16)
	conn.SetPingHandler(func(data string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	pongs := make(chan struct{}, 1)
	conn.SetPongHandler(func(string) error {
		select {
		case pongs <- struct{}{}:
		default:
		}
		return nil
	})
	if err := conn.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	for range 3 {
		select {
		case <-pings:
		case <-time.After(5 * time.Second):
			t.Fatal("no ping from the server")
		}
	}
	select {
	case <-pongs:
	case <-time.After(5 * time.Second):
		t.Fatal("no pong for the client's ping")
	}
	// Answering pings keeps the connection past several pong-waits' worth
	// of pings: it is still registered.
	if n := ts.hub.Connections(); n != 1 {
		t.Fatalf("connections = %d, want 1", n)
	}
	conn.Close()
	<-readErr
}

// TestTokenExpiryClosesConnection: a connection whose token expires is
// closed with 1008 "token expired" when it does.
func TestTokenExpiryClosesConnection(t *testing.T) {
	ts := startServer(t, testConfig(t))
	// exp has one-second resolution: this token expires 1 to 2 s from now.
	tok := signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": "u", "exp": time.Now().Add(2 * time.Second).Unix()})
	conn := ts.dialRaw("/ws?token="+tok, nil)
	waitFor(t, "u registered", func() bool { return ts.hub.Connections() == 1 })
	wantClose(t, conn, websocket.ClosePolicyViolation, "token expired")
	waitFor(t, "u unregistered", func() bool { return ts.hub.Connections() == 0 })
}

func TestUnknownPathsAndMethodsOnWS(t *testing.T) {
	ts := startServer(t, testConfig(t))
	// A plain GET on /ws is not a WebSocket handshake.
	code, _ := ts.do(http.MethodGet, "/ws?token="+url.QueryEscape(ts.token("u", time.Hour)), "", "", "")
	if code != http.StatusBadRequest {
		t.Errorf("GET /ws without upgrade = %d, want 400", code)
	}
	if ts.hub.Connections() != 0 {
		t.Errorf("a failed upgrade registered a connection")
	}
}

// The read buffer is small (readBufferSize) but must hold the largest
// control frame: a ping with 125 bytes of payload gets its pong, with the
// payload, and the connection goes on.
func TestLargestPingIsAnswered(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u")
	payload := strings.Repeat("p", 125)
	pong := make(chan string, 1)
	conn.SetPongHandler(func(data string) error {
		pong <- data
		return nil
	})
	if err := conn.WriteControl(websocket.PingMessage, []byte(payload), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, msg, err := conn.ReadMessage() // the pong handler runs in here
		if err == nil && string(msg) != "after" {
			err = fmt.Errorf("message %q, want %q", msg, "after")
		}
		readErr <- err
	}()
	select {
	case got := <-pong:
		if got != payload {
			t.Fatalf("pong payload %d bytes, want the 125 sent", len(got))
		}
	case err := <-readErr:
		t.Fatalf("no pong; read: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no pong for a 125-byte ping")
	}
	ts.sendOK("u", "after")
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
}
