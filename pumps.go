package main

import (
	"sync"
	"time"
)

// pumps runs writePumps on goroutines that are kept for a while between
// them. A writePump starts whenever an idle connection gets something to
// write and ends when its queue is empty, which at batch rates is once per
// message: a new goroutine each time cost creating it and growing its
// 2 KiB stack for the write path (the writev syscall goes deeper than a
// new stack allows), a fifth of the server's CPU per delivery
// (docs/performance.md). A worker that ran a writePump waits for the next
// one; the reaper ends the workers idle for pumpIdle, so the workers are
// as many as the writePumps that ran at once lately, and none is left
// soon after nothing is written.
//
// The Hub owns the pumps: stop ends the reaper and every idle worker and
// waits for all of them, after the Hub's WaitGroup said every writePump
// is done.
type pumps struct {
	mu      sync.Mutex
	idle    []*pumpWorker // the longest idle first
	live    int           // workers running or idle
	reaping bool          // the reaper runs
	stopped bool
	quit    chan struct{} // closed by stop: the reaper ends
	workers sync.WaitGroup
}

// pumpIdle is how long a worker waits for the next writePump, about.
const pumpIdle = time.Second

type pumpWorker struct {
	next      chan *Client // capacity 1: start never waits; nil ends the worker
	idleSince time.Time
}

// start runs c.writePump on an idle worker, or on a new one.
func (p *pumps) start(c *Client) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.next <- c
		return
	}
	if p.stopped {
		p.mu.Unlock()
		go c.writePump() // after stop: no worker waits for more
		return
	}
	p.workers.Add(1)
	p.live++
	if !p.reaping {
		p.reaping = true
		p.quit = make(chan struct{})
		p.workers.Add(1)
		go p.reap(p.quit)
	}
	p.mu.Unlock()
	go p.work(c)
}

// work runs writePumps, the first c's, until the reaper or stop ends it.
func (p *pumps) work(c *Client) {
	defer func() {
		p.mu.Lock()
		p.live--
		p.mu.Unlock()
		p.workers.Done()
	}()
	w := &pumpWorker{next: make(chan *Client, 1)}
	for c != nil {
		c.writePump()
		now := time.Now()
		p.mu.Lock()
		if p.stopped {
			p.mu.Unlock()
			return
		}
		w.idleSince = now
		p.idle = append(p.idle, w)
		p.mu.Unlock()
		c = <-w.next
	}
}

// reap ends the workers idle for pumpIdle, every pumpIdle, until quit;
// with no worker left it ends too (start runs it again).
func (p *pumps) reap(quit chan struct{}) {
	defer p.workers.Done()
	t := time.NewTicker(pumpIdle)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case now := <-t.C:
			if !p.reapOnce(now) {
				return
			}
		}
	}
}

// reapOnce ends the workers idle since before now-pumpIdle and reports
// whether any worker is left.
func (p *pumps) reapOnce(now time.Time) bool {
	p.mu.Lock()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idleSince) >= pumpIdle {
		p.idle[n].next <- nil
		n++
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	// The ended workers count until they return: live - n are left.
	left := p.live-n > 0
	if !left {
		p.reaping = false
	}
	p.mu.Unlock()
	return left
}

// count reports the workers running or idle.
func (p *pumps) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live
}

// stop ends the reaper and the idle workers, and waits for every worker
// to end. Workers still running a writePump end after it.
func (p *pumps) stop() {
	p.mu.Lock()
	p.stopped = true
	idle := p.idle
	p.idle = nil
	if p.reaping {
		close(p.quit)
		p.reaping = false
	}
	p.mu.Unlock()
	for _, w := range idle {
		w.next <- nil
	}
	p.workers.Wait()
}
