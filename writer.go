package main

import (
	"errors"
	"net"
	"time"

	"github.com/gorilla/websocket"
)

// This file is the writing half of a Client: the writer goroutine, which
// runs only while there is something to write, and the control frames.

// writeLoop is the writer goroutine: it writes queued messages (and a
// ping the pinger asked for) until there is nothing left, then exits, or
// writes the close frame when the client is closing.
func (c *Client) writeLoop() {
	defer c.hub.wg.Done()
	var batch []qitem
	for {
		c.mu.Lock()
		if batch != nil && cap(batch) <= maxSpare {
			clear(batch) // let the messages go
			c.spare = batch[:0]
		}
		batch = c.queue
		c.queue, c.spare = c.spare, nil
		ping := c.pingDue
		c.pingDue = false
		if len(batch) == 0 && !ping {
			st := c.state.Load()
			if st == stateOpen || st == stateClosed {
				c.writing = false
				c.mu.Unlock()
				return
			}
			// Closing: writing stays true so no writer starts again.
			code, text := c.closeCode, c.closeText
			c.mu.Unlock()
			c.writeClose(code, text)
			return
		}
		c.mu.Unlock()
		if len(batch) > 0 && !c.writeBatch(batch) {
			return
		}
		if ping && !c.writePing() {
			return
		}
	}
}

// writeBatch writes batch in order, in as few writes as it can: each
// message is still its own frame, but a connection with several messages
// queued (a burst, or a multicast under load) pays one system call for
// many of them. It returns false when the socket failed; it was then
// closed, and readPump tears the connection down.
func (c *Client) writeBatch(batch []qitem) bool {
	for len(batch) > 0 {
		n, ok := c.writeSome(batch)
		if !ok {
			// The socket failed in an early chunk: the rest was never
			// written either.
			rest := batch[n:]
			c.uncount(rest)
			c.hub.failed(rest, c.uid, failClosed)
			return false
		}
		batch = batch[n:]
	}
	return true
}

// writeSome writes the first items of batch in one write and returns how
// many it took. Raw frames are written from the messages themselves
// (writev), all of them; JSON frames are encoded into a pooled buffer, up
// to maxFrameBytes.
func (c *Client) writeSome(batch []qitem) (int, bool) {
	c.wmu.Lock()
	if c.state.Load() >= stateClosingNow {
		c.wmu.Unlock()
		c.dropBatch(batch)
		return len(batch), true
	}
	c.setWriteDeadline(time.Now())
	var n int64
	var err error
	var sizes []int64 // JSON frames' lengths, to tell which went out
	if c.json {
		sizes, n, err = c.writeJSON(batch)
		batch = batch[:len(sizes)]
	} else {
		n, err = c.writeRaw(batch)
	}
	c.wmu.Unlock()

	written := 0 // items whose whole frame went out
	for i, it := range batch {
		size := it.m.frameLen()
		if sizes != nil {
			size = sizes[i]
		}
		if n < size {
			break
		}
		n -= size
		written++
	}
	c.uncount(batch)
	now := time.Now()
	for _, it := range batch[:written] {
		if !it.ctl {
			c.hub.delivered(it.m, c.uid, now, it.replay)
		}
	}
	if err != nil {
		if written < len(batch) {
			c.hub.failed(batch[written:written+1], c.uid, failWriteError)
			c.hub.failed(batch[written+1:], c.uid, failClosed)
		}
		c.hub.log.Debug("write failed", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "err", err)
		c.abort()
		return len(batch), false
	}
	return len(batch), true
}

func (c *Client) writeRaw(batch []qitem) (int64, error) {
	iov := c.hub.iovs.Get().(*net.Buffers)
	bufs := (*iov)[:0]
	for _, it := range batch {
		bufs = append(bufs, it.m.header(), it.m.Data)
	}
	*iov = bufs // WriteTo consumes *iov; bufs keeps the buffers to clear
	n, err := iov.WriteTo(c.raw)
	clear(bufs) // let the messages go
	*iov = bufs[:0]
	c.hub.iovs.Put(iov)
	return n, err
}

// maxFrameBytes bounds one JSON write: a queue of large messages is
// written in several, not encoded into one huge buffer.
const maxFrameBytes = 256 << 10

// writeJSON encodes the first items of batch, up to maxFrameBytes (at
// least one), and writes them; sizes holds each frame's length.
func (c *Client) writeJSON(batch []qitem) (sizes []int64, n int64, err error) {
	bp := c.hub.frames.Get().(*[]byte)
	b := (*bp)[:0]
	for _, it := range batch {
		if len(b) >= maxFrameBytes {
			break
		}
		before := len(b)
		b = appendJSONFrame(b, it)
		sizes = append(sizes, int64(len(b)-before))
	}
	w, err := c.raw.Write(b)
	if cap(b) <= maxPooledFrames {
		*bp = b[:0]
		c.hub.frames.Put(bp)
	}
	return sizes, int64(w), err
}

// maxPooledFrames bounds the JSON frame buffers kept for reuse (a single
// large message may need more than maxFrameBytes).
const maxPooledFrames = 2 * maxFrameBytes

// uncount takes written or dropped items off the queue counters.
func (c *Client) uncount(items []qitem) {
	live := 0
	for _, it := range items {
		if !it.replay && !it.ctl {
			live++
		}
	}
	c.queued.Add(-int32(live))
	c.hub.pending.Add(-int64(len(items)))
}

// dropBatch uncounts items the writer took but will not write.
func (c *Client) dropBatch(items []qitem) {
	if len(items) == 0 {
		return
	}
	c.uncount(items)
	c.mu.Lock()
	reason := c.dropReason
	c.mu.Unlock()
	if reason == "" {
		reason = failClosed
	}
	c.hub.failed(items, c.uid, reason)
}

// setWriteDeadline gives the next write between half and all of
// -write-timeout. Setting a socket deadline re-arms a runtime timer under
// a lock (a tenth of a multicast's CPU when done for every frame), so it
// moves only when half the timeout has passed.
//
// gorilla sets the same socket's write deadline for control frames; every
// one of those it sends while data may follow (pings, pongs) has a
// deadline -write-timeout away, never earlier than this one.
func (c *Client) setWriteDeadline(now time.Time) {
	timeout := c.hub.cfg.WriteTimeout
	if c.writeDeadline.Sub(now) >= timeout/2 {
		return
	}
	c.writeDeadline = now.Add(timeout)
	// On a TCP socket it fails only once the socket is closed, which the
	// write that follows reports.
	_ = c.raw.SetWriteDeadline(c.writeDeadline)
}

// onPing answers a client's ping. gorilla's own handler would give the
// pong a one-second deadline, which would then cut short the writer's
// next frames (see setWriteDeadline). Under wmu: a frame writeNow could
// only half write is finished by writeRest, and the pong must not land in
// the middle of it.
func (c *Client) onPing(data string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := c.conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(c.hub.cfg.WriteTimeout))
	if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
		return err
	}
	return nil
}

// onClose is the close handler: the peer sent a close frame. No data
// frame may follow the close frame sent back, so the writer is stopped
// first (under wmu) and the queue is left to teardown.
func (c *Client) onClose(code int, _ string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	c.state.Store(stateClosed)
	c.mu.Unlock()
	if code == websocket.CloseNoStatusReceived {
		code = websocket.CloseNormalClosure
	}
	// ErrCloseSent when the server closed first; either way it is done.
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(closeGrace))
	return nil
}

// writeClose writes the close frame, then gives the peer closeGrace to
// answer before readPump gives up on it.
func (c *Client) writeClose(code int, text string) {
	msg := closeMessage(code, text)
	if err := c.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.hub.cfg.WriteTimeout)); err != nil {
		c.abort()
		return
	}
	c.closeSent.Store(true)
	c.graceDeadline()
}

func (c *Client) graceDeadline() {
	// net.Conn deadlines are safe to set from any goroutine and cannot fail
	// on an open TCP socket; on a closed one readPump is ending anyway.
	_ = c.conn.SetReadDeadline(time.Now().Add(closeGrace))
}

// requestPing has the writer send a ping; the pinger calls it once per
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
		go c.writeLoop()
	}
	return true
}

// writePing writes a ping after the frames queued before it. It returns
// false when the socket failed; it was then closed.
func (c *Client) writePing() bool {
	if c.state.Load() != stateOpen {
		return true
	}
	if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.hub.cfg.WriteTimeout)); err != nil {
		c.abort()
		return false
	}
	return true
}
