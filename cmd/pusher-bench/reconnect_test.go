package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// reconnectEngine is a short reconnect run against fs: 10 uids at 200
// messages per second each, every connection dropping about every 150 ms
// after stalling up to 30 ms, redialing after 10–50 ms.
func reconnectEngine(fs *fakeServer, opts ...func(*Engine)) *Engine {
	return testEngine(fs, scenarioReconnect, append([]func(*Engine){func(e *Engine) {
		e.Messages, e.Rate, e.Duration = 1000000, 2000, 1500*time.Millisecond
		e.DropInterval, e.DropStall, e.RedialMin, e.RedialMax = 150*time.Millisecond, 30*time.Millisecond, 10*time.Millisecond, 50*time.Millisecond
	}}, opts...)...)
}

// TestReconnect: against a server that recovers correctly, every accepted
// message reaches its slot once, replays happen, and a 404 while the
// only connection was down counts as expected.
func TestReconnect(t *testing.T) {
	fs := newFakeServer(t, faults{})
	rep := measure(t, reconnectEngine(fs))
	wantClean(t, rep)
	wantLatency(t, rep)
	if rep.Gaps != 0 || rep.NotFoundWhileOpen != 0 || rep.MissingRecovered != 0 {
		t.Errorf("gaps %d, wrong 404s %d, no recovered frame %d; want 0", rep.Gaps, rep.NotFoundWhileOpen, rep.MissingRecovered)
	}
	if rep.Drops < 20 || rep.Reconnects < rep.Drops || rep.RecoveredTrue != rep.Reconnects || rep.RecoveredFalse != 0 {
		t.Errorf("drops %d, reconnects %d, recovered true %d false %d: want many drops, each back with since= and recovered",
			rep.Drops, rep.Reconnects, rep.RecoveredTrue, rep.RecoveredFalse)
	}
	if rep.Replayed == 0 {
		t.Error("nothing replayed: the stalls should leave messages in flight")
	}
	if rep.ExpectedNotFound == 0 || rep.Status["404"] != rep.ExpectedNotFound {
		t.Errorf("expected 404s %d of %d: want some, and every 404 expected", rep.ExpectedNotFound, rep.Status["404"])
	}
	if rep.Expected != rep.Accepted || rep.Delivered != rep.Accepted {
		t.Errorf("accepted %d, expected %d, delivered %d: want the same", rep.Accepted, rep.Expected, rep.Delivered)
	}
	if l := rep.ReplayLatency; l == nil || l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max {
		t.Errorf("replay latency %+v: want 0 < p50 <= p99 <= max", l)
	}
	if rep.Before == nil || rep.After == nil || rep.After.Connections != rep.Before.Connections {
		t.Errorf("before %+v, after %+v: want the same connections", rep.Before, rep.After)
	}
}

// TestReconnectUnrecoverable: with a history of two messages per uid, a
// slot that missed more gets {"recovered": false}: the messages it gave
// up are counted apart, not as lost, and the run passes.
func TestReconnectUnrecoverable(t *testing.T) {
	fs := newFakeServer(t, faults{historySize: 2})
	rep := measure(t, reconnectEngine(fs, func(e *Engine) {
		e.Users, e.DropStall, e.RedialMin, e.RedialMax = 4, 40*time.Millisecond, 40*time.Millisecond, 60*time.Millisecond
	}))
	wantClean(t, rep)
	if rep.RecoveredFalse == 0 || rep.Unrecoverable == 0 {
		t.Errorf("recovered false %d, unrecoverable %d: want some", rep.RecoveredFalse, rep.Unrecoverable)
	}
	if rep.Gaps != 0 {
		t.Errorf("gaps %d, want 0: a recovered false excuses the skip", rep.Gaps)
	}
}

// TestReconnectTwoNodes: with two nodes, connections and /send requests
// go to both, and a redial goes to the other node.
func TestReconnectTwoNodes(t *testing.T) {
	fs := newFakeServer(t, faults{})
	second := fs.addNode()
	rep := measure(t, reconnectEngine(fs, func(e *Engine) { e.URL = fs.URL + "," + second }))
	wantClean(t, rep)
	for _, u := range []string{fs.URL, second} {
		if ws, send := fs.hitsOf("ws", u), fs.hitsOf("send", u); ws < rep.Reconnects/4 || send < rep.Requests/4 {
			t.Errorf("node %s: %d handshakes of %d, %d /send of %d: want both spread", u, ws, rep.Reconnects+rep.Connected, send, rep.Requests)
		}
	}
}

// TestReconnectFaultsShow: a server that loses an accepted message,
// replays one twice or skips one gets a report that says so, and Run
// fails.
func TestReconnectFaultsShow(t *testing.T) {
	tests := []struct {
		name  string
		f     faults
		check func(*Report) bool
	}{
		{"lost", faults{acceptDropEvery: 97}, func(r *Report) bool { return r.Lost > 0 && r.Gaps == 0 && r.Duplicates == 0 }},
		{"duplicate", faults{replayRepeat: true}, func(r *Report) bool {
			return r.Duplicates > 0 && r.Lost == 0 && strings.Contains(strings.Join(r.DuplicateSamples, ";"), "replayed on connection")
		}},
		{"gap", faults{replayGap: true}, func(r *Report) bool { return r.Gaps > 0 && r.Lost > 0 && len(r.GapSamples) > 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t, tt.f)
			e := reconnectEngine(fs, func(e *Engine) { e.JSON, e.Duration = true, time.Second })
			wantFaultReported(t, e, tt.check)
		})
	}
}

// TestReconnectTextReport: the text report names the reconnect figures.
func TestReconnectTextReport(t *testing.T) {
	fs := newFakeServer(t, faults{})
	e := reconnectEngine(fs, func(e *Engine) { e.Duration = 500 * time.Millisecond })
	if err := e.Run(context.Background()); err != nil {
		t.Fatalf("Run = %v; report:\n%s", err, e.Out)
	}
	out := e.Out.(*bytes.Buffer).String()
	for _, want := range []string{"drops:", "recovered true", "replay latency ms:", "live latency ms:", "expected 404s", "result:", "PASS"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
