package main

import (
	"sync"
	"time"
)

// pinger asks every connection for a ping once per -ping-interval, from
// one goroutine for all of them: a timer per connection would cost each
// idle connection a few hundred bytes. Connections sit in a wheel of
// slots, one visited per tick; a connection joins the slot visited last,
// so its first ping comes one interval after it registered. A torn-down
// connection leaves its slot when the slot is next visited, so the wheel
// holds every connection that is not torn down yet (each uses it at
// shutdown).
type pinger struct {
	tick time.Duration

	mu    sync.Mutex
	slots [][]*Client
	pos   int // the slot the next tick visits

	stop chan struct{}
	done chan struct{}
}

// maxPingSlots bounds the wheel: one-second ticks up to two minutes.
const maxPingSlots = 120

func newPinger(interval time.Duration) *pinger {
	n := int(min(max(interval/time.Second, 1), maxPingSlots))
	return &pinger{
		tick:  interval / time.Duration(n),
		slots: make([][]*Client, n),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
}

// add puts c in the wheel.
func (p *pinger) add(c *Client) {
	p.mu.Lock()
	last := (p.pos + len(p.slots) - 1) % len(p.slots)
	p.slots[last] = append(p.slots[last], c)
	p.mu.Unlock()
}

// each calls f for every connection in the wheel. f must not block.
func (p *pinger) each(f func(*Client)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, slot := range p.slots {
		for _, c := range slot {
			f(c)
		}
	}
}

// run visits a slot per tick until close.
func (p *pinger) run() {
	defer close(p.done)
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.visit()
		}
	}
}

// visit asks every open connection of the current slot for a ping and
// drops the torn-down ones. requestPing never blocks.
func (p *pinger) visit() {
	p.mu.Lock()
	defer p.mu.Unlock()
	slot := p.slots[p.pos]
	kept := slot[:0]
	for _, c := range slot {
		if c.requestPing() {
			kept = append(kept, c)
		}
	}
	clear(slot[len(kept):]) // let the closed ones go
	p.slots[p.pos] = kept
	p.pos = (p.pos + 1) % len(p.slots)
}

// close stops run and waits for it.
func (p *pinger) close() {
	close(p.stop)
	<-p.done
}
