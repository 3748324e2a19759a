package main

import (
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
)

// This file is the queue side of a Client: what the hub, the pinger and
// the close decisions do to it, under its lock, never blocking.

// enqueue queues it and returns whether it did. It never blocks: a full
// queue closes the connection as a slow consumer.
func (c *Client) enqueue(it stream.Item) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		c.hub.failed([]stream.Item{it}, c.uid, failClosed)
		return false
	}
	// A control frame (a refresh's answer) is not a message: it neither
	// counts against -send-buffer nor is counted there (see uncount).
	live := !it.Ctl && !it.Replay
	if live && int(c.queued.Load()) >= c.hub.cfg.SendBuffer {
		c.mu.Unlock()
		c.hub.failed([]stream.Item{it}, c.uid, failSlowConsumer)
		if c.close(websocket.CloseTryAgainLater, "slow consumer", failSlowConsumer, false) {
			c.hub.metrics.slowConsumers.Inc()
			c.hub.log.Info("slow consumer", "uid", c.uid, "remote", c.sock.RemoteAddr().String(), "queued", c.hub.cfg.SendBuffer)
		}
		return false
	}
	if it.Off != 0 && it.Off <= c.floor.N && it.Epoch == c.floor.Epoch {
		// The replay had it already. In cluster mode a message published
		// between the subscription and the history read comes twice: in
		// the replay and, later, live.
		c.mu.Unlock()
		return true
	}
	if c.queue == nil && c.spare != nil {
		c.queue, c.spare = c.spare, nil
	}
	c.queue = append(c.queue, it)
	if live {
		c.queued.Add(1)
	}
	c.hub.pending.Add(1)
	start := !c.held && c.startWriterLocked()
	c.mu.Unlock()
	if start {
		c.hub.pumps.start(c)
	}
	return true
}

// release ends a since= replay: it puts the replayed history and the
// recovered frame before the live messages queued meanwhile, dropping the
// live ones the replay covers (since's epoch, offsets up to the replay's
// last), and lets writePump go. With ok false only {"recovered": false}
// goes first. Offsets of one uid only grow, so what is left is in order,
// without a gap (the connection was registered before history was read)
// and without a duplicate.
func (c *Client) release(replay []stream.Item, ok bool, since stream.Position) {
	c.mu.Lock()
	if !c.held {
		c.mu.Unlock()
		return
	}
	c.held = false
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return // a close dropped what was queued; teardown does the rest
	}
	last := since.N
	if n := len(replay); n > 0 {
		last = replay[n-1].Off
	}
	out := make([]stream.Item, 0, len(replay)+1+len(c.queue))
	out = append(out, replay...)
	out = append(out, stream.Item{M: c.hub.recoveredFrame(ok), Ctl: true})
	var skipped []stream.Item
	for _, it := range c.queue {
		if ok && it.Epoch == since.Epoch && it.Off <= last {
			skipped = append(skipped, it)
			continue
		}
		out = append(out, it)
	}
	c.queue = out
	if ok {
		c.floor = stream.Position{Epoch: since.Epoch, N: last}
	}
	c.hub.pending.Add(int64(len(replay) + 1))
	start := c.startWriterLocked()
	c.mu.Unlock()
	c.uncount(skipped) // delivered by the replay instead
	if start {
		c.hub.pumps.start(c)
	}
}

// startWriterLocked reports whether the caller must start writePump, and
// counts it. Callers hold mu and have seen a state other than
// stateClosed, so the readPump's count keeps the WaitGroup above zero.
func (c *Client) startWriterLocked() bool {
	if c.writing {
		return false
	}
	c.writing = true
	c.hub.wg.Add(1)
	return true
}

// close decides that the connection closes with a close frame of code
// and text; with flush the queued messages are written first, otherwise
// they are dropped and counted under reason. From here on the connection
// takes no message, and the hub takes it out of the uid's open
// connections. It returns whether this call decided the close (the first
// one wins). It never blocks.
func (c *Client) close(code int, text, reason string, flush bool) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return false
	}
	var dropped []stream.Item
	if flush && !c.held {
		c.state.Store(stateClosing)
	} else {
		// A held connection is between its replay and the live messages
		// queued meanwhile: writing those without the replay would leave
		// a gap the client cannot see. They are in history; the client
		// recovers them with since=.
		c.state.Store(stateClosingNow)
		dropped = c.takeQueueLocked()
	}
	c.closeCode, c.closeText, c.dropReason = code, text, reason
	start := c.startWriterLocked()
	c.mu.Unlock()

	c.hub.failed(dropped, c.uid, reason)
	c.hub.leave(c)
	if start {
		c.hub.pumps.start(c)
	}
	return true
}

// maxSpare bounds the queue buffer a connection keeps between bursts:
// enough that a steady stream allocates nothing, small enough that an
// idle connection holds little.
const maxSpare = 16

// takeQueueLocked empties the queue and uncounts it.
func (c *Client) takeQueueLocked() []stream.Item {
	q := c.queue
	c.queue = nil
	c.uncount(q)
	return q
}

// uncount takes written or dropped items off the queue counters.
func (c *Client) uncount(items []stream.Item) {
	live := 0
	for _, it := range items {
		if !it.Replay && !it.Ctl {
			live++
		}
	}
	c.queued.Add(-int32(live))
	c.hub.pending.Add(-int64(len(items)))
}

// abort drops the socket at once (a failed write, the shutdown timeout);
// readPump then tears the connection down.
func (c *Client) abort() {
	// The error is of no use: the socket is gone either way.
	_ = c.sock.Close()
}

func (c *Client) expire() {
	c.mu.Lock()
	due := !c.expiresAt.IsZero() && !time.Now().Before(c.expiresAt)
	c.mu.Unlock()
	if !due {
		return // a refresh moved the expiry while this timer fired
	}
	c.close(websocket.ClosePolicyViolation, "token expired", failClosed, false)
}

// requestPing has writePump send a ping; the pinger calls it once per
// -ping-interval. It reports whether the connection is still there (the
// pinger forgets it otherwise), and never blocks.
func (c *Client) requestPing() bool {
	c.mu.Lock()
	st := c.state.Load()
	if st != stateOpen {
		c.mu.Unlock()
		return st != stateClosed
	}
	c.pingDue = true
	start := !c.held && c.startWriterLocked()
	c.mu.Unlock()
	if start {
		c.hub.pumps.start(c)
	}
	return true
}
