package main

import (
	"syscall"
	"time"
)

// This file is the writer's fast path: a message queued on an idle
// connection is written by the goroutine that queued it (the /send
// handler, or the cluster's receiver) in one non-blocking write, instead
// of by a writer goroutine started for it. Starting that goroutine, growing
// its stack for the write and switching to it cost more than the write
// itself; most messages find their connection idle.

// maxInlineData bounds the messages written in place: the frame is copied
// into one buffer for the write.
const maxInlineData = 8 << 10

// writeNow writes it, the only item for c, whose writer the caller claimed
// (writing set, counted in the hub's WaitGroup, the item counted as
// queued). A socket that takes the whole frame at once is done with in
// place; otherwise a writer goroutine writes the rest and whatever was
// queued meanwhile. writeNow never waits for the peer.
func (c *Client) writeNow(it qitem) {
	if !c.wmu.TryLock() {
		// The read goroutine holds wmu, writing a pong or a close frame,
		// maybe to a full socket (a peer that pings but does not read).
		// The caller (a /send handler, or the cluster's receiver, which
		// delivers for every uid) must not wait on this peer: a goroutine
		// does, and writes the message after the control frame.
		go func() {
			c.wmu.Lock()
			c.writeNowLocked(it)
		}()
		return
	}
	c.writeNowLocked(it)
}

// writeNowLocked is writeNow with wmu held.
func (c *Client) writeNowLocked(it qitem) {
	if c.state.Load() >= stateClosingNow {
		c.wmu.Unlock()
		c.dropBatch([]qitem{it})
		c.finishWriteNow()
		return
	}
	// A write deadline that passed long ago would fail even a
	// non-blocking write.
	c.setWriteDeadline(time.Now())
	f := c.hub.nowFrames.Get().(*nowFrame)
	if c.json {
		f.b = appendJSONFrame(f.b[:0], it)
	} else {
		f.b = append(append(f.b[:0], it.m.header()...), it.m.Data...)
	}
	n, err := f.tryWrite(c.rc)
	if err == nil && n < len(f.b) {
		// The socket is full (or cannot be written without waiting): a
		// writer goroutine finishes the frame. wmu goes with it, so that
		// nothing else is written into the middle of the frame.
		go c.writeRest(it, f, n)
		return
	}
	c.wmu.Unlock()
	c.hub.putNowFrame(f)
	c.wrote(it, err)
	if err != nil {
		c.hub.wg.Done() // writing stays true: no writer starts on a dead socket
		return
	}
	c.finishWriteNow()
}

// writeRest is the writer goroutine of a frame writeNow could not write
// whole: it holds wmu (handed over by writeNow), writes the frame's
// bytes from off on, and then goes on as the writer.
func (c *Client) writeRest(it qitem, f *nowFrame, off int) {
	c.setWriteDeadline(time.Now())
	_, err := c.raw.Write(f.b[off:])
	c.wmu.Unlock()
	c.hub.putNowFrame(f)
	c.wrote(it, err)
	if err != nil {
		c.hub.wg.Done()
		return
	}
	c.writeLoop()
}

// wrote accounts for it after its write: delivered, or failed with the
// socket closed. Items claimed by enqueue are never control frames or
// replays.
func (c *Client) wrote(it qitem, err error) {
	c.uncount([]qitem{it})
	if err != nil {
		c.hub.failed([]qitem{it}, c.uid, failWriteError)
		c.hub.log.Debug("write failed", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "err", err)
		c.abort()
		return
	}
	c.hub.delivered(it.m, c.uid, time.Now(), it.replay)
}

// finishWriteNow ends writeNow's turn as the writer: what was queued
// meanwhile (a message, a ping, a close) goes to a writer goroutine.
func (c *Client) finishWriteNow() {
	c.mu.Lock()
	if len(c.queue) == 0 && !c.pingDue && c.state.Load() == stateOpen {
		c.writing = false
		c.mu.Unlock()
		c.hub.wg.Done()
		return
	}
	c.mu.Unlock()
	go c.writeLoop() // takes over writeNow's count
}

// nowFrame is the frame of one writeNow, pooled with what its
// non-blocking write needs, so that the write allocates nothing.
type nowFrame struct {
	b   []byte
	n   int                   // what the last try wrote
	err error                 // and its error
	try func(fd uintptr) bool // f.attempt, bound once
}

func newNowFrame() any {
	f := new(nowFrame)
	f.try = f.attempt
	return f
}

// tryWrite writes f.b to the socket with one non-blocking write and
// returns how much it took: less than len(f.b), and no error, when the
// socket's buffer is full or rc is nil. It never waits.
func (f *nowFrame) tryWrite(rc syscall.RawConn) (int, error) {
	if rc == nil {
		return 0, nil
	}
	f.n, f.err = 0, nil
	if err := rc.Write(f.try); err != nil {
		return 0, err // closed, or the write deadline passed
	}
	return f.n, f.err
}

func (h *Hub) putNowFrame(f *nowFrame) {
	if cap(f.b) <= maxPooledFrames {
		f.b = f.b[:0]
		h.nowFrames.Put(f)
	}
}

// outbox holds the messages enqueue left to its caller on idle
// connections. The caller writes them with Hub.flush once it has let go
// of its locks, so that no lock is held across a system call; the order
// of each connection's messages holds, since everything queued after the
// claim waits for writeNow.
type outbox []pendingWrite

type pendingWrite struct {
	c  *Client
	it qitem
}

func (h *Hub) getOutbox() *outbox { return h.outboxes.Get().(*outbox) }

// flush writes what out holds and gives it back to the pool.
func (h *Hub) flush(out *outbox) {
	for i := range *out {
		p := &(*out)[i]
		p.c.writeNow(p.it)
		*p = pendingWrite{}
	}
	if cap(*out) <= maxPooledOutbox {
		*out = (*out)[:0]
		h.outboxes.Put(out)
	}
}

// maxPooledOutbox bounds the outboxes kept for reuse (a multicast to
// many uids makes a big one).
const maxPooledOutbox = 1024
