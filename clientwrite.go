package main

// This file is how writePump writes: batches of messages in as few
// system calls as it can, control frames, and the close frame.

import (
	"net"
	"time"

	"go-pusher/internal/stream"
)

// writeBatch writes batch in order, in as few writes as it can: each
// message is still its own frame, but a connection with several messages
// queued (a burst, or a multicast under load) pays one system call for
// many of them. It returns false when the socket failed; it was then
// closed, and readPump tears the connection down.
func (c *Client) writeBatch(batch []stream.Item) bool {
	for len(batch) > 0 {
		n, ok := c.writeSome(batch)
		if !ok {
			// The socket failed in an early chunk: the rest was never
			// written either.
			c.failAll(batch[n:])
			return false
		}
		batch = batch[n:]
	}
	return true
}

// failAll counts items the writePump took and will not write.
func (c *Client) failAll(items []stream.Item) {
	c.uncount(items)
	c.hub.failed(items, c.uid, failClosed)
}

// writeSome writes the first items of batch in one write and returns how
// many it took. Raw frames are written from the messages themselves
// (writev), all of them; JSON frames are encoded into a pooled buffer, up
// to maxFrameBytes.
func (c *Client) writeSome(batch []stream.Item) (int, bool) {
	if c.state.Load() >= stateClosingNow {
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

	written := 0 // items whose whole frame went out
	for i, it := range batch {
		size := it.M.FrameLen()
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
		if !it.Ctl {
			c.hub.delivered(it.M, c.uid, now, it.Replay)
		}
	}
	if err != nil {
		if written < len(batch) {
			c.hub.failed(batch[written:written+1], c.uid, failWriteError)
			c.hub.failed(batch[written+1:], c.uid, failClosed)
		}
		c.hub.log.Debug("write failed", "uid", c.uid, "remote", c.sock.RemoteAddr().String(), "err", err)
		c.abort()
		return len(batch), false
	}
	return len(batch), true
}

func (c *Client) writeRaw(batch []stream.Item) (int64, error) {
	iov := c.hub.iovs.Get().(*net.Buffers)
	bufs := (*iov)[:0]
	for _, it := range batch {
		bufs = append(bufs, it.M.Header(), it.M.Data)
	}
	*iov = bufs // WriteTo consumes *iov; bufs keeps the buffers to clear
	n, err := iov.WriteTo(c.sock)
	clear(bufs) // let the messages go
	*iov = bufs[:0]
	c.hub.iovs.Put(iov)
	return n, err
}

// maxFrameBytes bounds one JSON write: a queue of large messages is
// written in several, not encoded into one huge buffer.
const maxFrameBytes = 256 << 10

// maxPooledFrames bounds the JSON frame buffers kept for reuse (a single
// large message may need more than maxFrameBytes).
const maxPooledFrames = 2 * maxFrameBytes

// writeJSON encodes the first items of batch, up to maxFrameBytes (at
// least one), and writes them; sizes holds each frame's length.
func (c *Client) writeJSON(batch []stream.Item) (sizes []int64, n int64, err error) {
	bp := c.hub.frames.Get().(*[]byte)
	b := (*bp)[:0]
	for _, it := range batch {
		if len(b) >= maxFrameBytes {
			break
		}
		before := len(b)
		b = stream.AppendJSONFrame(b, it)
		sizes = append(sizes, int64(len(b)-before))
	}
	w, err := c.sock.Write(b)
	if cap(b) <= maxPooledFrames {
		*bp = b[:0]
		c.hub.frames.Put(bp)
	}
	return sizes, int64(w), err
}

// dropBatch counts items writePump took but will not write: the close
// decided since dropped the queue.
func (c *Client) dropBatch(items []stream.Item) {
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
func (c *Client) setWriteDeadline(now time.Time) {
	timeout := c.hub.cfg.WriteTimeout
	if c.writeDeadline.Sub(now) >= timeout/2 {
		return
	}
	c.writeDeadline = now.Add(timeout)
	// On a TCP socket it fails only once the socket is closed, which the
	// write that follows reports.
	_ = c.sock.SetWriteDeadline(c.writeDeadline)
}

// writeControl writes a ping or pong frame. It returns false when the
// socket failed; it was then closed.
func (c *Client) writeControl(op byte, payload string) bool {
	var buf [2 + stream.MaxControlPayload]byte
	c.setWriteDeadline(time.Now())
	if _, err := c.sock.Write(stream.AppendControlFrame(buf[:0], op, payload)); err != nil {
		c.abort()
		return false
	}
	return true
}

// writeClose writes the close frame, then gives the peer closeGrace to
// answer before readPump gives up on it, and lets a readPump waiting for
// the frame go on.
func (c *Client) writeClose(code int, text string) {
	var buf [2 + stream.MaxControlPayload]byte
	frame := stream.AppendCloseFrame(buf[:0], code, text)
	c.writeDeadline = time.Now().Add(c.hub.cfg.WriteTimeout)
	_ = c.sock.SetWriteDeadline(c.writeDeadline) // as in setWriteDeadline
	_, err := c.sock.Write(frame)
	c.mu.Lock()
	c.closeSent.Store(true)
	if c.closeDone != nil {
		close(c.closeDone)
	}
	c.mu.Unlock()
	if err != nil {
		c.abort()
		return
	}
	c.graceDeadline()
}
