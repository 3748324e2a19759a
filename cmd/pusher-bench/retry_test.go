package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// retryEngine is a retry run against fs: 300 keyed messages, through
// /send unless items is above 1.
func retryEngine(fs *fakeServer, items int, opts ...func(*Engine)) *Engine {
	return testEngine(fs, scenarioRetry, append([]func(*Engine){func(e *Engine) {
		e.BatchItems, e.RetryTimeout, e.RetryAbandon, e.RetryRepeat = items, time.Second, 0, 0
	}}, opts...)...)
}

// TestRetry: against a server that honours keys, requests dropped
// unanswered, hung up on, or answered 409 are tried again until a 200;
// the keys that went through the first time come back replayed, repeats
// are replays with the first id, and every message arrives once.
func TestRetry(t *testing.T) {
	for _, items := range []int{1, 5} {
		t.Run(map[int]string{1: "send", 5: "batch"}[items], func(t *testing.T) {
			fs := newFakeServer(t, faults{hangUpKeyedEvery: 7, conflictEvery: 11})
			rep := measure(t, retryEngine(fs, items, func(e *Engine) { e.RetryAbandon, e.RetryRepeat = 0.2, 0.2 }))
			wantClean(t, rep)
			wantLatency(t, rep)
			if rep.Requests != 300 || rep.Accepted != 300 || rep.Delivered != 300 || rep.Expected != 300 {
				t.Errorf("keys %d, acknowledged %d, delivered %d, expected %d; want 300 each", rep.Requests, rep.Accepted, rep.Delivered, rep.Expected)
			}
			if rep.Timeouts == 0 || rep.Abandoned == 0 || rep.Conflicts == 0 || rep.ReplayedAcks == 0 || rep.Repeats == 0 {
				t.Errorf("timeouts %d, abandoned %d, 409s %d, replayed 200s %d, repeats %d: want some of each",
					rep.Timeouts, rep.Abandoned, rep.Conflicts, rep.ReplayedAcks, rep.Repeats)
			}
			if items == 1 && rep.Retries != rep.Timeouts+rep.Abandoned+rep.Conflicts {
				t.Errorf("retries %d, want timeouts + abandoned + 409s = %d", rep.Retries, rep.Timeouts+rep.Abandoned+rep.Conflicts)
			}
			if rep.WrongReplays != 0 || rep.GaveUp != 0 || rep.KeyPrefix == "" {
				t.Errorf("wrong replays %d, gave up %d, key prefix %q; want 0, 0, a prefix", rep.WrongReplays, rep.GaveUp, rep.KeyPrefix)
			}
			path := map[int]string{1: "send", 5: "send/batch"}[items]
			if n := fs.hitsOf(path, fs.URL); n != rep.Posts {
				t.Errorf("the server saw %d %s, the report %d posts", n, path, rep.Posts)
			}
			out := e2text(t, rep)
			for _, want := range []string{"retries:", "abandoned", "repeats:", rep.KeyPrefix + "-<sender>-<seq>"} {
				if !strings.Contains(out, want) {
					t.Errorf("text report lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestRetryTimesOut: a -retry-timeout shorter than any round trip makes
// first tries time out; the doubling timeout lets a later try through,
// and the run passes.
func TestRetryTimesOut(t *testing.T) {
	fs := newFakeServer(t, faults{})
	rep := measure(t, retryEngine(fs, 1, func(e *Engine) { e.Messages, e.RetryTimeout, e.RetryAttempts = 60, 20*time.Microsecond, 20 }))
	wantClean(t, rep)
	if rep.Timeouts == 0 || rep.Accepted != 60 || rep.GaveUp != 0 {
		t.Errorf("timeouts %d, acknowledged %d, gave up %d; want some, 60, 0", rep.Timeouts, rep.Accepted, rep.GaveUp)
	}
}

// TestRetryKeysArePerRun: a second run against the same server (which
// remembers keys) meets none of the first run's keys.
func TestRetryKeysArePerRun(t *testing.T) {
	fs := newFakeServer(t, faults{})
	first := measure(t, retryEngine(fs, 1, func(e *Engine) { e.Messages = 50 }))
	// The second run's baseline: none of the first run's connections.
	if !waitUntil(context.Background(), 5*time.Second, 5*time.Millisecond, func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return len(fs.conns) == 0
	}) {
		t.Fatal("the first run's connections are still open after 5 s")
	}
	second := measure(t, retryEngine(fs, 1, func(e *Engine) { e.Messages = 50 }))
	wantClean(t, second)
	if second.ReplayedAcks != 0 || second.Delivered != 50 || first.KeyPrefix == second.KeyPrefix {
		t.Errorf("second run: replayed 200s %d, delivered %d, key prefixes %q and %q; want 0, 50, different",
			second.ReplayedAcks, second.Delivered, first.KeyPrefix, second.KeyPrefix)
	}
}

// TestRetryFaultsShow: a server that sends a retried key twice, sends a
// repeat again, acknowledges a key it never delivered, or refuses a key
// gets a report that says so, and Run fails.
func TestRetryFaultsShow(t *testing.T) {
	tests := []struct {
		name  string
		items int
		f     faults
		opts  func(*Engine)
		check func(*Report) bool
	}{
		{"retried key delivered twice", 1, faults{hangUpKeyedEvery: 7, forgetKeys: true}, nil, func(r *Report) bool {
			return r.Duplicates > 0 && r.Lost == 0 && r.Timeouts > 0
		}},
		{"batch: retried key delivered twice", 5, faults{hangUpKeyedEvery: 7, forgetKeys: true}, nil, func(r *Report) bool {
			return r.Duplicates > 0 && r.Lost == 0 && r.Timeouts > 0
		}},
		{"repeat sent again", 1, faults{forgetKeys: true}, func(e *Engine) { e.RetryRepeat = 1 }, func(r *Report) bool {
			return r.Repeats == 300 && r.WrongReplays == 300 && r.Duplicates == 300 && strings.Contains(r.WrongReplaySample, "replayed false")
		}},
		{"acknowledged, never delivered", 1, faults{hangUpKeyedEvery: 7, hangUpUnsent: true}, nil, func(r *Report) bool {
			return r.Lost > 0 && r.ReplayedAcks >= r.Lost && r.Duplicates == 0 && r.Accepted == 300
		}},
		{"batch: acknowledged, never delivered", 5, faults{hangUpKeyedEvery: 7, hangUpUnsent: true}, nil, func(r *Report) bool {
			return r.Lost > 0 && r.ReplayedAcks >= r.Lost && r.Duplicates == 0 && r.Accepted == 300
		}},
		{"key refused", 1, faults{reuseEvery: 50}, nil, func(r *Report) bool {
			return r.Status["422"] == 6 && r.Accepted == 294 && strings.HasPrefix(r.FirstError, "422 idempotency key reused")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t, tt.f)
			e := retryEngine(fs, tt.items, func(e *Engine) { e.Drain, e.JSON = time.Second, true })
			if tt.opts != nil {
				tt.opts(e)
			}
			wantFaultReported(t, e, tt.check)
		})
	}
}

// TestRetryFlags: retry posts keyed /send unless -batch-items is given,
// and a batch of it has at most one item per uid.
func TestRetryFlags(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"JWT_SECRET": "s", "PUSHER_API_KEY": "k"}[k] }
	tests := []struct {
		args      []string
		wantItems int
		wantErr   string
	}{
		{[]string{"-scenario", "retry"}, 1, ""},
		{[]string{"-scenario", "retry", "-batch-items", "20"}, 20, ""},
		{[]string{"-scenario", "batch"}, 100, ""},
		{[]string{"-scenario", "retry", "-users", "10", "-batch-items", "11"}, 0, "at most -users"},
		{[]string{"-scenario", "retry", "-retry-timeout", "0s"}, 0, "invalid -retry-timeout"},
		{[]string{"-scenario", "retry", "-retry-abandon", "2"}, 0, "-retry-abandon and -retry-repeat"},
		{[]string{"-scenario", "batch", "-batch-items", "0"}, 0, "invalid -batch-items 0"},
	}
	for _, tt := range tests {
		e, _, err := parseFlags(tt.args, getenv, new(bytes.Buffer))
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("parseFlags(%q) = %v, want an error with %q", tt.args, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || e.BatchItems != tt.wantItems):
			t.Errorf("parseFlags(%q) = -batch-items %v, %v; want %d", tt.args, e, err, tt.wantItems)
		}
	}
}
