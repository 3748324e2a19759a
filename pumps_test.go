package main

import (
	"fmt"
	"testing"
)

// TestPumpWorkersEndWhenIdle: the goroutines that run writePumps are
// reused while messages flow and end about pumpIdle after the last one.
func TestPumpWorkersEndWhenIdle(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conns := ts.dial("u")
	for i := range 50 {
		msg := fmt.Sprint(i)
		ts.sendOK("u", msg)
		if got := readText(t, conns); got != msg {
			t.Fatalf("got %q, want %q", got, msg)
		}
	}
	// One connection, one message at a time: a worker is idle again long
	// before the next message (an HTTP round trip later), so one does
	// nearly all of it. Without reuse there would be 50, each waiting
	// pumpIdle; a few are allowed for a worker not back in time.
	if n := ts.hub.pumps.count(); n > 5 {
		t.Errorf("%d writePump workers after 50 messages to one connection, want 1 to 5 (reused)", n)
	}
	waitFor(t, "idle writePump workers to end", func() bool { return ts.hub.pumps.count() == 0 })
	// And a new one starts for the next message.
	ts.sendOK("u", "again")
	if got := readText(t, conns); got != "again" {
		t.Fatalf("got %q, want again", got)
	}
}
