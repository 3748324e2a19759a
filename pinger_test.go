package main

import (
	"testing"
	"time"
)

func TestPingerWheelSize(t *testing.T) {
	for _, tt := range []struct {
		interval time.Duration
		slots    int
		tick     time.Duration
	}{
		{25 * time.Second, 25, time.Second},
		{20 * time.Millisecond, 1, 20 * time.Millisecond},
		{1500 * time.Millisecond, 1, 1500 * time.Millisecond},
		{time.Hour, maxPingSlots, 30 * time.Second},
	} {
		p := newPinger(tt.interval)
		if len(p.slots) != tt.slots || p.tick != tt.tick {
			t.Errorf("newPinger(%s) = %d slots of %s, want %d of %s", tt.interval, len(p.slots), p.tick, tt.slots, tt.tick)
		}
	}
}

// TestPingerForgetsClosedConnections: a slot keeps its open connections
// and drops the closed ones when visited.
func TestPingerForgetsClosedConnections(t *testing.T) {
	p := newPinger(time.Second)
	h := &Hub{}
	open, closed := &Client{hub: h, writing: true}, &Client{hub: h}
	closed.state.Store(stateClosed)
	p.add(open)
	p.add(closed)
	p.visit()
	if got := p.slots[0]; len(got) != 1 || got[0] != open {
		t.Fatalf("slot after visit = %v, want just the open connection", got)
	}
	if !open.pingDue {
		t.Error("the open connection was not asked for a ping")
	}
}
