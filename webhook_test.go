package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go-pusher/internal/webhook"
)

const testWebhookSecret = "test-webhook-secret-0123456789abcdef"

// receiver is a webhook receiver the test runs: it checks each batch's
// signature and keeps the events; fail makes it answer 500 that many
// times first.
type receiver struct {
	t *testing.T
	*httptest.Server

	mu      sync.Mutex
	events  []webhook.Event
	batches int
	fail    int
	bad     []string          // what was wrong with a request
	before  func(body []byte) // when set, runs after a request is taken, before its answer
}

func startReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body := r.serve(w, req)
		r.mu.Lock()
		before := r.before
		r.mu.Unlock()
		if before != nil {
			before(body)
		}
	}))
	t.Cleanup(r.Close)
	return r
}

// holdAnswers makes the receiver hold its answer to each request for which
// hold returns a channel, until that channel is closed.
func (r *receiver) holdAnswers(hold func(body []byte) <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.before = func(body []byte) {
		if c := hold(body); c != nil {
			<-c
		}
	}
}

// serve takes a request, and returns its body.
func (r *receiver) serve(w http.ResponseWriter, req *http.Request) []byte {
	body, _ := io.ReadAll(req.Body)
	ts := req.Header.Get("X-Pusher-Timestamp")
	sig := req.Header.Get("X-Pusher-Signature")
	r.mu.Lock()
	defer r.mu.Unlock()
	sec, err := strconv.ParseInt(ts, 10, 64)
	switch {
	case err != nil || time.Since(time.Unix(sec, 0)) > time.Minute:
		r.bad = append(r.bad, "timestamp "+ts)
	case !validSignature(testWebhookSecret, ts, body, sig):
		r.bad = append(r.bad, "signature "+sig)
	case req.Header.Get("Content-Type") != "application/json":
		r.bad = append(r.bad, "content type")
	}
	if r.fail > 0 {
		r.fail--
		w.WriteHeader(http.StatusInternalServerError)
		return body
	}
	var batch []webhook.Event
	if err := json.Unmarshal(body, &batch); err != nil || len(batch) == 0 || len(batch) > 100 {
		r.bad = append(r.bad, "body "+string(body))
	}
	r.batches++
	r.events = append(r.events, batch...)
	return body
}

// got is "event uid" of each event received, in order.
func (r *receiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, e.Event+" "+e.UID)
	}
	return out
}

func (r *receiver) check() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bad {
		r.t.Errorf("receiver: bad %s", b)
	}
	for _, e := range r.events {
		if _, err := time.Parse(time.RFC3339, e.Time); err != nil || !strings.Contains(e.Time, ".") || !strings.HasSuffix(e.Time, "Z") {
			r.t.Errorf("event time %q: want RFC 3339 with ms, UTC", e.Time)
		}
	}
}

func startWebhookServer(t *testing.T, url string, args ...string) *testServer {
	t.Helper()
	cfg, err := parseConfig(append([]string{"-addr", "127.0.0.1:0", "-message-log", "none", "-webhook-url", url, "-webhook-offline-delay", "400ms"}, args...),
		testEnv(map[string]string{"PUSHER_WEBHOOK_SECRET": testWebhookSecret}))
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, cfg)
}

// TestWebhookPresence: online when a uid's first connection opens;
// offline once its last one closed and none came back within the delay;
// a reload within the delay sends nothing; a flapping uid's events
// alternate, in order.
func TestWebhookPresence(t *testing.T) {
	rcv := startReceiver(t)
	ts := startWebhookServer(t, rcv.URL)
	a := ts.dial("ann")
	waitFor(t, "online ann", func() bool { return len(rcv.got()) == 1 })
	b := ts.dial("ann") // a second connection: nothing
	a.Close()
	b.Close()
	waitFor(t, "ann gone", func() bool { return len(ts.hub.clients("ann")) == 0 })
	c := ts.dial("ann") // back within the delay: a reload
	// Past the delay, the point of the test: a wait for a moment, not a state.
	time.Sleep(700 * time.Millisecond)
	if got := rcv.got(); len(got) != 1 {
		t.Errorf("a reload within the delay sent %v", got)
	}
	c.Close()
	waitFor(t, "offline ann", func() bool { return len(rcv.got()) == 2 })
	for i := range 3 { // flapping, each time past the delay
		ts.dial("bob").Close()
		waitFor(t, "bob online and offline", func() bool { return len(rcv.got()) == 4+2*i })
	}
	want := "online ann,offline ann,online bob,offline bob,online bob,offline bob,online bob,offline bob"
	if got := strings.Join(rcv.got(), ","); got != want {
		t.Errorf("events %s, want %s", got, want)
	}
	rcv.check()
}

// TestWebhookRetries: a receiver that answers 500 twice gets the batch
// once, afterwards; the retries are counted.
func TestWebhookRetries(t *testing.T) {
	rcv := startReceiver(t)
	rcv.fail = 2
	ts := startWebhookServer(t, rcv.URL)
	ts.dial("cy")
	waitFor(t, "online cy delivered", func() bool { return len(rcv.got()) == 1 })
	if got := strings.Join(rcv.got(), ","); got != "online cy" {
		t.Errorf("events %s", got)
	}
	if n := ts.metric("pusher_webhook_events_retried_total"); n != 2 {
		t.Errorf("retried %v, want 2", n)
	}
	if n := ts.metric("pusher_webhook_events_sent_total"); n != 1 {
		t.Errorf("sent %v, want 1", n)
	}
	rcv.check()
}

// TestWebhookDeadReceiver: a receiver that never answers costs /ws and
// /send nothing; its events are dropped after -webhook-retry and
// counted.
func TestWebhookDeadReceiver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts nothing: every POST times out or is refused
	ts := startWebhookServer(t, "http://"+ln.Addr().String()+"/hook", "-webhook-retry", "1s")
	conn := ts.dial("dee")
	start := time.Now()
	for range 20 {
		ts.sendOK("dee", "m")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("20 sends took %s with a dead receiver", took)
	}
	for range 20 {
		readText(t, conn)
	}
	waitFor(t, "the event dropped", func() bool { return ts.metric("pusher_webhook_events_dropped_total") == 1 })
}

// TestWebhookConfig: the secret is required, and the URL is http(s).
func TestWebhookConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	base := map[string]string{"JWT_SECRET": testSecret, "PUSHER_API_KEY": testAPIKey}
	if _, err := parseConfig([]string{"-webhook-url", "https://backend/hook"}, env(base)); err == nil || !strings.Contains(err.Error(), "PUSHER_WEBHOOK_SECRET") {
		t.Errorf("no secret: %v", err)
	}
	withSecret := map[string]string{"PUSHER_WEBHOOK_SECRET": "s"}
	maps.Copy(withSecret, base)
	if _, err := parseConfig([]string{"-webhook-url", "ftp://backend/hook"}, env(withSecret)); err == nil || !strings.Contains(err.Error(), "-webhook-url") {
		t.Errorf("ftp: %v", err)
	}
}

// validSignature checks a webhook request as a receiver does (the
// README's snippet): HMAC-SHA256 of "<timestamp>.<body>", compared in
// constant time.
func validSignature(secret, timestamp string, body []byte, header string) bool {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(timestamp + "."))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(header), []byte(want))
}

// TestWebhookShutdown: on one node a shutdown sends the offline of every
// uid at once (it does not wait for the delay), and delivers what is
// queued before it ends: a restart then begins with onlines.
func TestWebhookShutdown(t *testing.T) {
	rcv := startReceiver(t)
	ts := startWebhookServer(t, rcv.URL, "-webhook-offline-delay", "1h")
	ts.dial("sam")
	ts.dial("tia")
	waitFor(t, "two onlines", func() bool { return len(rcv.got()) == 2 })
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	got := rcv.got() // the shutdown waited for the delivery
	if len(got) != 4 || !strings.Contains(strings.Join(got[2:], ","), "offline sam") || !strings.Contains(strings.Join(got[2:], ","), "offline tia") {
		t.Errorf("events %v, want two onlines then both offline at shutdown", got)
	}
	rcv.check()
}
