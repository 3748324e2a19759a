package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestBatch: 300 messages in /send/batch requests of 7 items (the last
// has 6) all arrive once, in order, and the report counts them by
// message and the POSTs apart.
func TestBatch(t *testing.T) {
	fs := newFakeServer(t, faults{})
	rep := measure(t, testEngine(fs, scenarioBatch))
	wantClean(t, rep)
	wantLatency(t, rep)
	if rep.Requests != 300 || rep.Accepted != 300 || rep.Delivered != 300 || rep.Expected != 300 {
		t.Errorf("messages %d, accepted %d, delivered %d, expected %d; want 300 each", rep.Requests, rep.Accepted, rep.Delivered, rep.Expected)
	}
	if rep.Posts != 43 || rep.BatchItems != 7 {
		t.Errorf("posts %d of %d items; want 43 of 7", rep.Posts, rep.BatchItems)
	}
	if fs.hitsOf("send/batch", fs.URL) != 43 || fs.hitsOf("send", fs.URL) != 0 {
		t.Errorf("the server saw %d /send/batch and %d /send; want 43 and 0", fs.hitsOf("send/batch", fs.URL), fs.hitsOf("send", fs.URL))
	}
	if rep.DeliveredPerCPUSec <= 0 {
		t.Errorf("delivered per server CPU-second = %v, want positive", rep.DeliveredPerCPUSec)
	}
	out := e2text(t, rep)
	if !strings.Contains(out, "messages:") || !strings.Contains(out, "in 43 POSTs of up to 7 items") {
		t.Errorf("text report does not show messages and POSTs:\n%s", out)
	}
}

// TestBatchFaultsShow: a batch whose messages are lost, duplicated,
// answered 404 while their uid is held, or refused whole gets a report
// that says so, and Run fails.
func TestBatchFaultsShow(t *testing.T) {
	tests := []struct {
		name  string
		f     faults
		check func(*Report) bool
	}{
		{"lost", faults{dropEvery: 50}, func(r *Report) bool { return r.Lost == 6 && r.Delivered == 294 && r.Duplicates == 0 }},
		{"duplicate", faults{dupEvery: 50}, func(r *Report) bool { return r.Duplicates == 6 && r.Lost == 0 && r.Delivered == 300 }},
		{"item 404 while connected", faults{notFoundEvery: 30}, func(r *Report) bool {
			return r.Status["404"] == 10 && r.NotFoundWhileOpen == 10 && r.Accepted == 290 && strings.HasPrefix(r.FirstError, "404 client not found")
		}},
		{"refused whole", faults{maxBatch: 5}, func(r *Report) bool {
			return r.Status["413"] == 300 && r.Accepted == 0 && r.Delivered == 0 && strings.Contains(r.FirstError, "at most 5 messages")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t, tt.f)
			e := testEngine(fs, scenarioBatch, func(e *Engine) { e.Drain, e.JSON = time.Second, true })
			wantFaultReported(t, e, tt.check)
		})
	}
}

// e2text is rep as the text report.
func e2text(t *testing.T, rep *Report) string {
	t.Helper()
	var b bytes.Buffer
	if err := rep.print(&b, false); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
