package main

// The backend block of deploy/nginx/go-pusher.conf: the API through nginx
// answers as it does direct.

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go-pusher/internal/testutil"
)

// apiCall is one request to the backend API, made the same way through
// nginx and directly.
type apiCall struct {
	name        string
	method      string // POST unless set
	path        string
	contentType string
	body        string
	header      http.Header       // besides Authorization: Bearer testAPIKey, which it may replace
	status      int               // the answer's, wanted on both ways
	deliver     map[string]string // uid → the message its WebSocket then reads
	anyBody     bool              // the body is not compared (/metrics: the counters moved)
}

// apiAnswer is what a backend sees of an answer: the status, the headers
// the server sets, and the body with message ids (new on each send) made
// equal.
type apiAnswer struct {
	status int
	header string
	body   string
	raw    string // the body as it came
}

var (
	// apiHeaders are the answer headers a backend reads: the media type,
	// the challenge of a 401, the Allow of a 405, a replay's mark.
	apiHeaders = []string{"Content-Type", "X-Content-Type-Options", "WWW-Authenticate", "Allow", "Idempotent-Replayed"}
	messageIDs = regexp.MustCompile(`"id":"[^"]*"`)
)

func doAPI(t *testing.T, client *http.Client, base string, c apiCall) apiAnswer {
	t.Helper()
	method := cmp.Or(c.method, http.MethodPost)
	req, err := http.NewRequest(method, base+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	maps.Copy(req.Header, c.header)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	var h strings.Builder
	for _, name := range apiHeaders {
		fmt.Fprintf(&h, "%s: %q\n", name, resp.Header.Values(name))
	}
	a := apiAnswer{status: resp.StatusCode, header: h.String(), raw: string(body)}
	if !c.anyBody {
		a.body = messageIDs.ReplaceAllString(string(body), `"id":"…"`)
	}
	return a
}

// backendCalls are the requests each way makes, in order, with alice and
// bob connected. way names the way: idempotency keys are its own.
func backendCalls(cfg Config, way string) []apiCall {
	const form, js = "application/x-www-form-urlencoded", "application/json"
	key := http.Header{"Idempotency-Key": {"order-" + way}}
	return []apiCall{
		{
			name: "unicast", path: "/send", contentType: form, body: "uid=alice&message=hello",
			status: http.StatusOK, deliver: map[string]string{"alice": "hello"},
		},
		{name: "offline uid", path: "/send", contentType: form, body: "uid=nobody&message=hello", status: http.StatusNotFound},
		{
			name: "wrong key", path: "/send", contentType: form, body: "uid=alice&message=hello",
			header: http.Header{"Authorization": {"Bearer wrong-key"}}, status: http.StatusUnauthorized,
		},
		{
			name: "no key", path: "/send", contentType: form, body: "uid=alice&message=hello",
			header: http.Header{"Authorization": nil}, status: http.StatusUnauthorized,
		},
		{name: "bad uid", path: "/send", contentType: js, body: `{"uid":"a\u0001b","message":"hello"}`, status: http.StatusBadRequest},
		{
			name: "oversized message", path: "/send", contentType: form,
			body:   "uid=alice&message=" + strings.Repeat("x", cfg.MaxMessageSize+1),
			status: http.StatusRequestEntityTooLarge,
		},
		{name: "GET /send", method: http.MethodGet, path: "/send?uid=alice&message=hello", status: http.StatusMethodNotAllowed},
		{
			name: "multicast", path: "/send", contentType: js, body: `{"uids":["alice","nobody","bob"],"message":"all"}`,
			status: http.StatusOK, deliver: map[string]string{"alice": "all", "bob": "all"},
		},
		{name: "query string", path: "/send?uid=bob&message=q", status: http.StatusOK, deliver: map[string]string{"bob": "q"}},
		{
			name: "key", path: "/send", contentType: js, body: `{"uid":"alice","message":"paid"}`, header: key,
			status: http.StatusOK, deliver: map[string]string{"alice": "paid"},
		},
		{
			name: "key retried", path: "/send", contentType: js, body: `{"uid":"alice","message":"paid"}`, header: key,
			status: http.StatusOK, // replayed: nothing sent
		},
		{
			name: "key reused", path: "/send", contentType: js, body: `{"uid":"alice","message":"refunded"}`, header: key,
			status: http.StatusUnprocessableEntity,
		},
		{
			name: "key twice", path: "/send", contentType: js, body: `{"uid":"alice","message":"twice"}`,
			header: http.Header{"Idempotency-Key": {"k1-" + way, "k2-" + way}}, status: http.StatusBadRequest,
		},
		{
			name: "batch", path: "/send/batch", contentType: js,
			body:   `{"messages":[{"uid":"alice","message":"a"},{"uids":["bob","nobody"],"message":"b"},{"uid":"nobody","message":"c"}]}`,
			status: http.StatusOK, deliver: map[string]string{"alice": "a", "bob": "b"},
		},
		{
			name: "largest batch", path: "/send/batch", contentType: js, body: largestBatch(cfg),
			status: http.StatusOK, deliver: map[string]string{"bob": "big"},
		},
		{name: "online", path: "/online", contentType: js, body: `{"uids":["alice","nobody"]}`, status: http.StatusOK},
		{name: "disconnect", path: "/disconnect", contentType: js, body: `{"uids":["nobody"]}`, status: http.StatusOK},
		{name: "healthz", method: http.MethodGet, path: "/healthz", status: http.StatusOK},
		{name: "readyz", method: http.MethodGet, path: "/readyz", status: http.StatusOK},
		{name: "metrics", method: http.MethodGet, path: "/metrics", status: http.StatusOK, anyBody: true},
	}
}

// largestBatch is a /send/batch body of exactly -max-batch-bytes: "big"
// to bob, then messages of -max-message-size to an offline uid.
func largestBatch(cfg Config) string {
	var b strings.Builder
	b.WriteString(`{"messages":[{"uid":"bob","message":"big"}`)
	filler := `,{"uid":"nobody","message":"` + strings.Repeat("x", cfg.MaxMessageSize) + `"}`
	for int64(b.Len()+len(filler)+len("]}")) <= cfg.MaxBatchBytes {
		b.WriteString(filler)
	}
	b.WriteString("]")
	b.WriteString(strings.Repeat(" ", int(cfg.MaxBatchBytes)-b.Len()-1))
	b.WriteString("}")
	return b.String()
}

// TestNginxBackendAPI: the deploy file's backend block in front of the
// server's -internal-addr answers the API as the internal listener
// itself does. The same requests go through nginx, then directly; their
// status, the headers the server sets and the body (message ids aside)
// must be the same, and each message reaches its WebSockets once.
func TestNginxBackendAPI(t *testing.T) {
	p := startBinary(t, buildBinary(t), []string{
		"-internal-addr", "127.0.0.1:0", "-message-log", "none", "-allowed-origins", nginxOrigin,
	})
	internal := internalAddr(t, p)
	// nginx reaches the server through a proxy that counts its connections.
	hop := testutil.StartProxy(t, internal)
	ngx := startNginx(t, p.addr, hop.Addr(), time.Minute)
	cfg := testConfig(t)
	if n := len(largestBatch(cfg)); int64(n) != cfg.MaxBatchBytes {
		t.Fatalf("largestBatch is %d bytes, want %d", n, cfg.MaxBatchBytes)
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	sockets := map[string]*wsReader{
		"alice": readConn(t, dialNginx(t, ngx.public, "alice")),
		"bob":   readConn(t, dialNginx(t, ngx.public, "bob")),
	}

	ways := []struct{ name, base string }{
		{"nginx", "http://" + ngx.backend},
		{"direct", "http://" + internal},
	}
	answers := map[string][]apiAnswer{}
	for _, way := range ways {
		calls := backendCalls(cfg, way.name)
		for _, c := range calls {
			a := doAPI(t, client, way.base, c)
			answers[way.name] = append(answers[way.name], a)
			if a.status != c.status {
				t.Errorf("%s %s: %d %.200q, want %d", way.name, c.name, a.status, a.raw, c.status)
				continue // nothing to read; the last message below finds any stray
			}
			for uid, msg := range c.deliver {
				wantRead(t, sockets[uid], msg)
			}
		}
		// The retried key was answered as the first time, marked, and sent
		// nothing: a last message is the next each socket reads.
		first, again := answers[way.name][slices.IndexFunc(calls, func(c apiCall) bool { return c.name == "key" })],
			answers[way.name][slices.IndexFunc(calls, func(c apiCall) bool { return c.name == "key retried" })]
		if again.raw != first.raw || !strings.Contains(again.header, `Idempotent-Replayed: ["true"]`) || strings.Contains(first.header, `Idempotent-Replayed: ["true"]`) {
			t.Errorf("%s: retried key answered %q\n%s, first %q\n%s: want the same body, marked Idempotent-Replayed: true", way.name, again.raw, again.header, first.raw, first.header)
		}
		for uid, r := range sockets {
			a := doAPI(t, client, way.base, apiCall{name: "last", path: "/send", contentType: "application/x-www-form-urlencoded", body: "uid=" + uid + "&message=last"})
			if a.status != http.StatusOK {
				t.Fatalf("%s: last message to %s = %d %q", way.name, uid, a.status, a.raw)
			}
			wantRead(t, r, "last")
		}
	}
	for i, c := range backendCalls(cfg, "") {
		n, d := answers["nginx"][i], answers["direct"][i]
		if n.status != d.status || n.header != d.header || n.body != d.body {
			t.Errorf("%s through nginx:\n%d\n%s%.300q\ndirect:\n%d\n%s%.300q", c.name, n.status, n.header, n.body, d.status, d.header, d.body)
		}
	}

	t.Run("keep-alive to the server", func(t *testing.T) {
		before := hop.Accepted()
		for range 20 {
			if a := doAPI(t, client, "http://"+ngx.backend, apiCall{name: "healthz", method: http.MethodGet, path: "/healthz"}); a.status != http.StatusOK {
				t.Fatalf("/healthz through nginx = %d %q", a.status, a.raw)
			}
		}
		if n := hop.Accepted() - before; n > 1 {
			t.Errorf("20 requests through nginx opened %d connections to the server, want at most 1 (keepalive)", n)
		}
	})

	t.Run("only the API on the backend block", func(t *testing.T) {
		for _, path := range []string{"/", "/ws", "/console.js", "/debug/pprof/", "/admin", "/sendx", "/send/", "/send/batch/x", "/api/send"} {
			code, body := httpDo(t, http.MethodPost, "http://"+ngx.backend+path)
			if code != http.StatusNotFound || !strings.Contains(body, "<center>nginx") {
				t.Errorf("POST %s through the backend block = %d %q, want nginx's own 404", path, code, body)
			}
		}
		// The public block still has no /send.
		code, body := httpDo(t, http.MethodPost, "http://"+ngx.public+"/send?uid=alice&message=x")
		if code != http.StatusNotFound || !strings.Contains(body, "<center>nginx") {
			t.Errorf("/send through the public block = %d %q, want nginx's own 404", code, body)
		}
	})

	t.Run("other networks denied", func(t *testing.T) {
		// 127.0.0.2: loopback too, but not in the allow-list.
		other := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext,
		}}
		defer other.CloseIdleConnections()
		a := doAPI(t, other, "http://"+ngx.backend, apiCall{name: "denied", path: "/send?uid=alice&message=denied"})
		if a.status != http.StatusForbidden || !strings.Contains(a.raw, "<center>nginx") {
			t.Errorf("/send from 127.0.0.2 = %d %q, want nginx's own 403", a.status, a.raw)
		}
		if a := doAPI(t, client, "http://"+internal, apiCall{name: "after", path: "/send?uid=alice&message=after"}); a.status != http.StatusOK {
			t.Fatalf("/send direct = %d %q", a.status, a.raw)
		}
		wantRead(t, sockets["alice"], "after") // the denied message never went out
	})
}
