package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"go-pusher/internal/cluster"
	"go-pusher/internal/testutil"
	"go-pusher/message"
)

// sendKey posts a form /send of msg to uid with Idempotency-Key key.
func (ts *testServer) sendKey(key, uid, msg string) (int, http.Header, string) {
	ts.t.Helper()
	return ts.post("/send", "application/json", `{"uid":"`+uid+`","message":"`+msg+`"}`, http.Header{"Idempotency-Key": {key}})
}

func TestIdempotentSend(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		conn := ts.dial("u1")

		code, h, first := ts.sendKey("order-1", "u1", "paid")
		if code != http.StatusOK || h.Get("Idempotent-Replayed") != "" {
			t.Fatalf("first send = %d %q (replayed %q), want 200 not replayed", code, first, h.Get("Idempotent-Replayed"))
		}
		if got := readText(t, conn); got != "paid" {
			t.Fatalf("got %q, want paid", got)
		}
		code, h, again := ts.sendKey("order-1", "u1", "paid")
		if code != http.StatusOK || again != first || h.Get("Idempotent-Replayed") != "true" || h.Get("Content-Type") != "application/json" {
			t.Errorf("retry = %d %q (replayed %q), want 200 %q with Idempotent-Replayed: true", code, again, h.Get("Idempotent-Replayed"), first)
		}
		code, _, body := ts.sendKey("order-1", "u1", "refunded")
		if code != http.StatusUnprocessableEntity || body != "idempotency key reused with a different request\n" {
			t.Errorf("same key, other message = %d %q, want 422", code, body)
		}
		code, _, body = ts.post("/send", "application/json", `{"uids":["u1"],"message":"paid"}`, http.Header{"Idempotency-Key": {"order-1"}})
		if code != http.StatusUnprocessableEntity {
			t.Errorf("same key, multicast of the same = %d %q, want 422", code, body)
		}

		// Only 200s are remembered: a 404 can be retried with its key.
		if code, _, body := ts.sendKey("order-2", "u2", "hi"); code != http.StatusNotFound {
			t.Fatalf("send to offline u2 = %d %q, want 404", code, body)
		}
		u2 := ts.dial("u2")
		if code, _, body := ts.sendKey("order-2", "u2", "hi"); code != http.StatusOK {
			t.Fatalf("retry once u2 is online = %d %q, want 200", code, body)
		}
		if got := readText(t, u2); got != "hi" {
			t.Fatalf("u2 got %q, want hi", got)
		}

		// A multicast's answer is replayed whole.
		mc := `{"uids":["u1","gone"],"message":"all"}`
		_, _, mfirst := ts.post("/send", "application/json", mc, http.Header{"Idempotency-Key": {"mc"}})
		_, h, magain := ts.post("/send", "application/json", mc, http.Header{"Idempotency-Key": {"mc"}})
		if magain != mfirst || h.Get("Idempotent-Replayed") != "true" || !strings.Contains(mfirst, `"not_found":["gone"]`) {
			t.Errorf("multicast retry = %q, want %q replayed", magain, mfirst)
		}
		if got := readText(t, conn); got != "all" {
			t.Fatalf("got %q, want all", got)
		}

		if logs := ts.msgLog.logged(); len(logs) != 3 {
			t.Errorf("logged %d messages, want 3 (paid, hi, all): %+v", len(logs), logs)
		}
		if got := testutil.Counter(t, ts.metrics.replays); got != 2 {
			t.Errorf("pusher_idempotent_replays_total = %v, want 2", got)
		}
		assertNothingPushed(t, ts, conn, "u1")
	})
}

func TestIdempotencyKeyBadInput(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		conn := ts.dial("u1")
		for name, keys := range map[string][]string{
			"empty":     {""},
			"too long":  {strings.Repeat("k", 129)},
			"not ascii": {"clé"},
			"twice":     {"a", "b"},
		} {
			code, _, body := ts.post("/send", "application/x-www-form-urlencoded", "uid=u1&message=m", http.Header{"Idempotency-Key": keys})
			if code != http.StatusBadRequest || !strings.HasPrefix(body, "idempotency key must") {
				t.Errorf("%s key: /send = %d %q, want 400 naming the key", name, code, body)
			}
		}
		if logs := ts.msgLog.logged(); len(logs) != 0 {
			t.Errorf("refused requests logged %d messages", len(logs))
		}
		assertNothingPushed(t, ts, conn, "u1")
	})
}

// gateLogger holds every Log call until open is closed, and tells entered
// when one arrives.
type gateLogger struct {
	message.Logger
	entered chan struct{}
	open    chan struct{}
}

func (g *gateLogger) Log(ctx context.Context, ms ...message.Log) error {
	g.entered <- struct{}{}
	<-g.open
	return g.Logger.Log(ctx, ms...)
}

func TestIdempotencyKeyInFlight(t *testing.T) {
	gate := &gateLogger{entered: make(chan struct{}, 1), open: make(chan struct{})}
	ts := startServerWith(t, testConfig(t), func(s *Server) {
		gate.Logger = s.msgLog
		s.msgLog = gate
	})
	conn := ts.dial("u1")
	var wg sync.WaitGroup
	var first string
	wg.Go(func() {
		code, _, body := ts.sendKey("k", "u1", "m")
		if code != http.StatusOK {
			t.Errorf("first send = %d %q, want 200", code, body)
		}
		first = body
	})
	<-gate.entered
	code, _, body := ts.sendKey("k", "u1", "m")
	if code != http.StatusConflict || body != "request with this idempotency key in progress\n" {
		t.Errorf("same key in flight = %d %q, want 409", code, body)
	}
	code, _, body = ts.sendKey("k", "u1", "other")
	if code != http.StatusUnprocessableEntity {
		t.Errorf("same key in flight, other message = %d %q, want 422", code, body)
	}
	res := ts.batch(map[string]any{"uid": "u1", "message": "m", "idempotency_key": "k"})
	if res[0].Status != http.StatusConflict || res[0].Error != "request with this idempotency key in progress" {
		t.Errorf("batch item with the key in flight = %+v, want status 409", res[0])
	}
	close(gate.open)
	wg.Wait()
	if got := readText(t, conn); got != "m" {
		t.Fatalf("got %q, want m", got)
	}
	if code, _, body := ts.sendKey("k", "u1", "m"); code != http.StatusOK || body != first {
		t.Errorf("after the first finished = %d %q, want its answer %q", code, body, first)
	}
	assertNothingPushed(t, ts, conn, "u1")
}

func TestBatchIdempotencyKeys(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u1")
	keyed := func(key, msg string) map[string]any {
		return map[string]any{"uid": "u1", "message": msg, "idempotency_key": key}
	}
	first := ts.batch(keyed("a", "1"), keyed("b", "2"), unicastItem("u1", "3"))
	_, _, sent := ts.sendKey("c", "u1", "4")
	var viaSend batchResult
	if err := json.Unmarshal([]byte(sent), &viaSend); err != nil {
		t.Fatal(err)
	}
	again := ts.batch(keyed("a", "1"), keyed("b", "other"), keyed("c", "4"), keyed("d", "5"))
	want := []batchResult{
		{ID: first[0].ID, Replayed: true},
		{Status: http.StatusUnprocessableEntity, Error: "idempotency key reused with a different request"},
		{ID: viaSend.ID, Replayed: true}, // a /send key is the same key in a batch
	}
	for i, w := range want {
		if got := again[i]; got.ID != w.ID || got.Replayed != w.Replayed || got.Status != w.Status || got.Error != w.Error {
			t.Errorf("result %d = %+v, want %+v", i, got, w)
		}
	}
	if again[3].ID == "" || again[3].Replayed {
		t.Errorf("new key's result = %+v, want sent", again[3])
	}
	for _, want := range []string{"1", "2", "3", "4", "5"} {
		if got := readText(t, conn); got != want {
			t.Fatalf("got %q, want %q: a replayed item was sent again or one is missing", got, want)
		}
	}
	assertNothingPushed(t, ts, conn, "u1")
}

func TestIdempotencyTTLZeroIgnoresKeys(t *testing.T) {
	ts := startServer(t, testConfig(t, "-idempotency-ttl", "0"))
	conn := ts.dial("u1")
	for range 2 {
		if code, h, body := ts.sendKey("k", "u1", "m"); code != http.StatusOK || h.Get("Idempotent-Replayed") != "" {
			t.Fatalf("send = %d %q (replayed %q), want 200, sent", code, body, h.Get("Idempotent-Replayed"))
		}
		if got := readText(t, conn); got != "m" {
			t.Fatalf("got %q, want m", got)
		}
	}
}

// failingBroker fails PublishAll while fail is set, marking the
// publications unsent (nothing reached Redis) or not (outcome unknown).
type failingBroker struct {
	Broker
	mu           sync.Mutex
	fail, unsent bool
}

func (b *failingBroker) set(fail, unsent bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail, b.unsent = fail, unsent
}

func (b *failingBroker) PublishAll(ctx context.Context, pubs []*cluster.Publication) error {
	b.mu.Lock()
	fail, unsent := b.fail, b.unsent
	b.mu.Unlock()
	if !fail {
		return b.Broker.PublishAll(ctx, pubs)
	}
	for _, p := range pubs {
		p.Unsent = unsent
	}
	return errors.New("redis went away")
}

// TestPublishFailureReleasesWhatSurelyWentNowhere: after a failed publish
// the keys of messages that surely reached nobody can be retried at once
// (and their log rows say failed); a key whose message may have gone out
// stays claimed, so a retry gets 409, not a second send.
func TestPublishFailureReleasesWhatSurelyWentNowhere(t *testing.T) {
	fb := &failingBroker{}
	ts := startServerWith(t, testConfig(t), func(s *Server) {
		fb.Broker = s.broker
		s.broker = fb
	})
	conn := ts.dial("u")
	keyed := func(key, uid, msg string) map[string]any {
		return map[string]any{"uid": uid, "message": msg, "idempotency_key": key}
	}
	batch := `{"messages":[{"uid":"u","message":"m1","idempotency_key":"k1"},{"uid":"off","message":"m2","idempotency_key":"k2"}]}`

	fb.set(true, true)
	if code, _, body := ts.post("/send/batch", "application/json", batch, nil); code != http.StatusServiceUnavailable {
		t.Fatalf("batch with the publish failing = %d %q, want 503", code, body)
	}
	logged := ts.msgLog.logged()
	if len(logged) != 1 {
		t.Fatalf("logged %+v, want m1", logged)
	}
	if st, ok := ts.msgLog.status(logged[0].ID, "u"); !ok || st != message.StatusFailed {
		t.Errorf("m1's row: %v (%v), want failed: it surely went nowhere", st, ok)
	}
	fb.set(false, false)
	res := ts.batch(keyed("k1", "u", "m1"), keyed("k2", "off", "m2"))
	if res[0].ID == "" || res[0].Replayed || res[1].Status != http.StatusNotFound {
		t.Fatalf("retry = %+v, want m1 sent and m2 404", res)
	}
	if got := readText(t, conn); got != "m1" {
		t.Fatalf("got %q, want m1", got)
	}

	fb.set(true, false)
	if code, _, _ := ts.sendKey("k3", "u", "m3"); code != http.StatusServiceUnavailable {
		t.Fatalf("send with the publish failing = %d, want 503", code)
	}
	fb.set(false, false)
	if code, _, body := ts.sendKey("k3", "u", "m3"); code != http.StatusConflict {
		t.Errorf("retry of a message whose publish may have gone out = %d %q, want 409", code, body)
	}
	assertNothingPushed(t, ts, conn, "u")
}
