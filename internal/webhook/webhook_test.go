package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secret = "test-webhook-secret"

// receiver is a webhook receiver that checks each request's signature and
// answers with what answer says for the n-th request (from 0).
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	answer func(n int) int

	mu      sync.Mutex
	batches [][]Event // the accepted ones, in order
	posts   int
	got     chan struct{} // one value per accepted batch
}

func newReceiver(t *testing.T, answer func(n int) int) *receiver {
	t.Helper()
	r := &receiver{t: t, answer: answer, got: make(chan struct{}, 1000)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.t.Errorf("read body: %v", err)
		return
	}
	ts := req.Header.Get("X-Pusher-Timestamp")
	if sec, err := strconv.ParseInt(ts, 10, 64); err != nil || time.Since(time.Unix(sec, 0)).Abs() > time.Minute {
		r.t.Errorf("X-Pusher-Timestamp %q is not the time now in Unix seconds", ts)
	}
	if got, want := req.Header.Get("X-Pusher-Signature"), "sha256="+Sign(secret, ts, body); got != want {
		r.t.Errorf("X-Pusher-Signature %q, want %q", got, want)
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/json" {
		r.t.Errorf("Content-Type %q", ct)
	}
	r.mu.Lock()
	n := r.posts
	r.posts++
	r.mu.Unlock()
	code := r.answer(n)
	if code/100 == 2 {
		var batch []Event
		if err := json.Unmarshal(body, &batch); err != nil {
			r.t.Errorf("body %s: %v", body, err)
		}
		r.mu.Lock()
		r.batches = append(r.batches, batch)
		r.mu.Unlock()
		r.got <- struct{}{}
	}
	w.WriteHeader(code)
}

// wait waits for n accepted batches.
func (r *receiver) wait(n int) {
	r.t.Helper()
	for range n {
		select {
		case <-r.got:
		case <-time.After(10 * time.Second):
			r.t.Fatalf("the receiver did not get a batch in 10 s; it has %d", len(r.accepted()))
		}
	}
}

func (r *receiver) accepted() [][]Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]Event(nil), r.batches...)
}

func ok(int) int { return http.StatusNoContent }

func newSender(t *testing.T, url string, cfg Config) (*Sender, *prometheus.Registry) {
	t.Helper()
	cfg.URL, cfg.Secret = url, secret
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Retry == 0 {
		cfg.Retry = time.Minute
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 1000
	}
	if cfg.BatchMax == 0 {
		cfg.BatchMax = 100
	}
	if cfg.BatchWait == 0 {
		cfg.BatchWait = 50 * time.Millisecond
	}
	reg := prometheus.NewRegistry()
	s := New(cfg, slog.New(slog.DiscardHandler), reg)
	s.Start()
	t.Cleanup(func() { s.Close(context.Background()) })
	return s, reg
}

func event(i int) Event {
	return Event{Event: "online", UID: "u" + strconv.Itoa(i), Time: time.Now().UTC().Format(TimeFormat)}
}

// metric is the one series of the metric name in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metric(t, reg, name).GetGauge().GetValue()
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metric(t, reg, name).GetCounter().GetValue()
}

// TestSignKnownValue: the signature is the hex HMAC-SHA256 of
// "<timestamp>.<body>", as openssl computes it (and the README's receiver
// snippet): printf '1700000000.[]' | openssl dgst -sha256 -hmac test-webhook-secret
func TestSignKnownValue(t *testing.T) {
	const want = "01a3c801995abf356a752bf2d796f88cff8a3aaf12233944698e8bb2485004b5"
	if got := Sign(secret, "1700000000", []byte("[]")); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

// TestBatchesKeepOrderAndBound: 250 events arrive in order, in batches of
// at most BatchMax, each signed.
func TestBatchesKeepOrderAndBound(t *testing.T) {
	r := newReceiver(t, ok)
	s, reg := newSender(t, r.srv.URL, Config{BatchMax: 100})
	for i := range 250 {
		s.Send(event(i))
	}
	waitEvents(t, r, 250)
	s.Close(context.Background()) // the last 2xx is counted once its answer is read
	var all []Event
	for _, b := range r.accepted() {
		if len(b) == 0 || len(b) > 100 {
			t.Errorf("a batch of %d events, want 1 to 100", len(b))
		}
		all = append(all, b...)
	}
	for i, e := range all {
		if e.UID != "u"+strconv.Itoa(i) {
			t.Fatalf("event %d is %s: out of order", i, e.UID)
		}
	}
	if got := counter(t, reg, "pusher_webhook_events_sent_total"); got != 250 {
		t.Errorf("sent = %v, want 250", got)
	}
}

// waitEvents waits until the receiver accepted n events in all.
func waitEvents(t *testing.T, r *receiver, n int) {
	t.Helper()
	for {
		got := 0
		for _, b := range r.accepted() {
			got += len(b)
		}
		if got >= n {
			return
		}
		r.wait(1)
	}
}

// TestRetryDeliversOnce: a receiver that answers 500, then 200 gets the
// batch once, and the retry is counted.
func TestRetryDeliversOnce(t *testing.T) {
	r := newReceiver(t, func(n int) int {
		if n == 0 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	s, reg := newSender(t, r.srv.URL, Config{})
	s.Send(event(1))
	s.Send(event(2))
	r.wait(1)
	s.Close(context.Background())
	if got := r.accepted(); len(got) != 1 || len(got[0]) != 2 {
		t.Fatalf("accepted %v, want one batch of 2", got)
	}
	if got := counter(t, reg, "pusher_webhook_events_retried_total"); got != 2 {
		t.Errorf("retried = %v, want 2 (one retry of two events)", got)
	}
	if got := counter(t, reg, "pusher_webhook_events_dropped_total"); got != 0 {
		t.Errorf("dropped = %v, want 0", got)
	}
}

// TestRetryIsBounded: a receiver that always fails costs the batch after
// Retry, and the drop is counted; the next batch is tried again.
func TestRetryIsBounded(t *testing.T) {
	var failing sync.Mutex
	fail := true
	r := newReceiver(t, func(int) int {
		failing.Lock()
		defer failing.Unlock()
		if fail {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	s, reg := newSender(t, r.srv.URL, Config{Retry: 600 * time.Millisecond})
	s.Send(event(1))
	deadline := time.Now().Add(10 * time.Second)
	for counter(t, reg, "pusher_webhook_events_dropped_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the batch was not dropped within 10 s of a 600 ms retry bound")
		}
		time.Sleep(10 * time.Millisecond)
	}
	failing.Lock()
	fail = false
	failing.Unlock()
	s.Send(event(2))
	r.wait(1)
	if got := r.accepted(); len(got) != 1 || len(got[0]) != 1 || got[0][0].UID != "u2" {
		t.Errorf("accepted %v, want only u2", got)
	}
}

// TestFullQueueDropsWithoutBlocking: with the receiver stuck, Send never
// blocks; past the queue's bound events are dropped and counted.
func TestFullQueueDropsWithoutBlocking(t *testing.T) {
	release := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // as in TestCloseCutsAPostInFlight
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer stuck.Close()
	defer close(release)
	s, reg := newSender(t, stuck.URL, Config{QueueSize: 10, BatchMax: 1, BatchWait: time.Millisecond})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range 1000 {
			s.Send(event(i))
		}
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("Send blocked behind a stuck receiver")
	}
	// One event is in the POST, ten wait, the rest are dropped.
	if got := counter(t, reg, "pusher_webhook_events_dropped_total"); got < 1000-11 {
		t.Errorf("dropped = %v, want at least %d", got, 1000-11)
	}
}

// TestCloseFlushesQueue: Close delivers what is queued before it returns.
func TestCloseFlushesQueue(t *testing.T) {
	r := newReceiver(t, ok)
	s, reg := newSender(t, r.srv.URL, Config{BatchMax: 10, BatchWait: time.Hour})
	for i := range 35 {
		s.Send(event(i))
	}
	s.Close(context.Background())
	n := 0
	for _, b := range r.accepted() {
		n += len(b)
	}
	if n != 35 {
		t.Errorf("after Close the receiver has %d events, want 35", n)
	}
	if got := counter(t, reg, "pusher_webhook_events_sent_total"); got != 35 {
		t.Errorf("sent = %v, want 35", got)
	}
}

// TestCloseCutsAPostInFlight: a POST under way when Close begins waits at
// most closingTimeout more, not its own Timeout; the batch is counted as
// dropped.
func TestCloseCutsAPostInFlight(t *testing.T) {
	arrived := make(chan struct{}, 1)
	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // read to the end: only then does a client's hang-up cancel r.Context()
		arrived <- struct{}{}
		<-r.Context().Done()
	}))
	defer hang.Close()
	s, reg := newSender(t, hang.URL, Config{Timeout: time.Minute, BatchWait: time.Millisecond})
	s.Send(event(1))
	<-arrived
	start := time.Now()
	s.Close(context.Background())
	// closingTimeout (2 s) plus slack; the bug this guards against takes
	// the POST's Timeout, a minute.
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("Close took %v with a POST in flight, want about %v", took, closingTimeout)
	}
	if got := counter(t, reg, "pusher_webhook_events_dropped_total"); got != 1 {
		t.Errorf("dropped = %v, want 1", got)
	}
}

// TestCloseTriesOnce: with a receiver that fails, Close tries each queued
// batch once, without retries, and counts them dropped.
func TestCloseTriesOnce(t *testing.T) {
	r := newReceiver(t, func(int) int { return http.StatusInternalServerError })
	s, reg := newSender(t, r.srv.URL, Config{BatchMax: 1, BatchWait: time.Hour})
	for i := range 5 {
		s.Send(event(i))
	}
	s.Close(context.Background())
	if got := counter(t, reg, "pusher_webhook_events_dropped_total"); got != 5 {
		t.Errorf("dropped = %v, want 5", got)
	}
	if got := counter(t, reg, "pusher_webhook_events_sent_total"); got != 0 {
		t.Errorf("sent = %v, want 0", got)
	}
}

// memOrder is an Order in memory, shared by the senders of a test as
// Redis is by the nodes of a cluster.
type memOrder struct {
	mu   sync.Mutex
	d    map[string]int64
	down bool // Delivered fails, as with Redis down
}

func (o *memOrder) Delivered(_ context.Context, uids []string) (map[string]int64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down {
		return nil, errors.New("redis down")
	}
	out := map[string]int64{}
	for _, uid := range uids {
		out[uid] = o.d[uid]
	}
	return out, nil
}

func (o *memOrder) MarkDelivered(_ context.Context, uids []string, seqs []int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, uid := range uids {
		o.d[uid] = max(o.d[uid], seqs[i])
	}
	return nil
}

// numbered is event seq of uid.
func numbered(event, uid string, seq int64) Event {
	return Event{Event: event, UID: uid, Time: time.Now().UTC().Format(TimeFormat), Seq: seq}
}

// TestOrderAcrossSenders: two senders share a uid's events. The second
// holds its event back while the first retries the one before it, then
// sends it; the receiver gets them in order. A uid whose previous event
// went out, and an event that is first, are not held.
func TestOrderAcrossSenders(t *testing.T) {
	var mu sync.Mutex
	failA := true
	r := newReceiver(t, func(int) int { return http.StatusOK })
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		fail := failA && req.URL.Path == "/a"
		mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		r.serve(w, req)
	}))
	defer gate.Close()
	order := &memOrder{d: map[string]int64{"other": 4}}
	a, _ := newSender(t, gate.URL+"/a", Config{Order: order})
	// b's three events in one batch however the scheduler runs: a batch
	// closes a second after its first event.
	b, _ := newSender(t, gate.URL+"/b", Config{Order: order, BatchWait: time.Second})
	a.Send(numbered("online", "u", 1))
	b.Send(numbered("offline", "u", 2))
	b.Send(numbered("offline", "other", 5))
	b.Send(numbered("online", "first", 1))
	r.wait(1)
	if got := r.accepted(); len(got) != 1 || len(got[0]) != 2 || got[0][0].UID != "other" || got[0][1].UID != "first" {
		t.Fatalf("while a retries: accepted %v, want other's and first's events only", got)
	}
	mu.Lock()
	failA = false
	mu.Unlock()
	waitEvents(t, r, 4)
	var seq []string
	for _, batch := range r.accepted()[1:] {
		for _, e := range batch {
			seq = append(seq, e.Event+" "+e.UID)
		}
	}
	if got := strings.Join(seq, ","); got != "online u,offline u" {
		t.Errorf("u's events arrived as %s, want online then offline", got)
	}
}

// TestOrderGivesUp: an event whose previous one never comes (its sender
// died) waits at most Retry + Timeout + 2 BatchWait; with Order down it
// does not wait at all.
func TestOrderGivesUp(t *testing.T) {
	r := newReceiver(t, ok)
	order := &memOrder{d: map[string]int64{}}
	s, _ := newSender(t, r.srv.URL, Config{Order: order, Retry: 300 * time.Millisecond, Timeout: 200 * time.Millisecond})
	start := time.Now()
	s.Send(numbered("offline", "orphan", 2))
	r.wait(1)
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("the orphan went after %v, before its hold of 600 ms", took)
	}
	order.mu.Lock()
	order.down = true
	order.mu.Unlock()
	start = time.Now()
	s.Send(numbered("offline", "waiting", 7))
	r.wait(1)
	if got := r.accepted(); len(got) != 2 || got[1][0].UID != "waiting" {
		t.Errorf("accepted %v, want waiting's event sent with Order down", got)
	}
	// A batch wait (50 ms) and the POST, not the hold (600 ms).
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Errorf("with Order down the event went after %v: it was held", took)
	}
}

// TestHeldEventsAreBounded: events held for their predecessors count
// against the queue's bound; past it the oldest go without waiting.
func TestHeldEventsAreBounded(t *testing.T) {
	r := newReceiver(t, ok)
	order := &memOrder{d: map[string]int64{}}
	s, reg := newSender(t, r.srv.URL, Config{Order: order, QueueSize: 3})
	for i := range 5 {
		s.Send(numbered("offline", "u"+strconv.Itoa(i), 2)) // each waits for an event 1 nobody sends
		// One at a time, so that none is dropped by the queue itself.
		deadline := time.Now().Add(10 * time.Second)
		for gauge(t, reg, "pusher_webhook_events_held")+counter(t, reg, "pusher_webhook_events_sent_total") < float64(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("event %d neither held nor sent in 10 s", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var got []string
	for _, b := range r.accepted() {
		for _, e := range b {
			got = append(got, e.UID)
		}
	}
	if strings.Join(got, ",") != "u0,u1" {
		t.Errorf("sent %v, want the two oldest past a bound of 3", got)
	}
	if held := gauge(t, reg, "pusher_webhook_events_held"); held != 3 {
		t.Errorf("held = %v, want 3", held)
	}
}
