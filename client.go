package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// maxReadSize is the largest message a client may send; clients have
	// nothing to say to the server (the article's readPump discards it), so
	// anything larger is closed with 1009.
	maxReadSize = 512

	// closeGrace is how long the server waits for the peer's reply to its
	// close frame before dropping the socket.
	closeGrace = time.Second
)

// The states of a Client. Transitions happen under Client.mu and only go
// forward; state is atomic so the writer can check it between messages
// without the lock.
const (
	stateOpen       int32 = iota
	stateClosing          // write what is queued, then the close frame
	stateClosingNow       // drop what is queued, write the close frame
	stateClosed           // torn down: the socket is closed
)

// Client is one WebSocket connection of a uid.
//
// Goroutines: readPump runs for the whole life of the connection and ends
// it (teardown). A writer goroutine runs only while there is something to
// write (messages, or a ping the hub's pinger asked for), so an idle
// connection costs one goroutine, not two. Both are counted in the hub's
// WaitGroup.
type Client struct {
	hub       *Hub
	conn      *websocket.Conn
	raw       net.Conn // the socket under conn: data frames are written here
	uid       string
	expiresAt time.Time

	// wmu orders data frames against the close frame the readPump sends
	// back when the peer closes: no data frame may follow a close.
	wmu sync.Mutex

	state  atomic.Int32
	queued atomic.Int32 // messages queued or being written: at most SendBuffer

	mu         sync.Mutex
	queue      []*Message // not yet taken by the writer
	spare      []*Message // the writer's last batch, emptied, for the next queue
	writing    bool       // a writer goroutine runs (or the close frame was handed to one)
	closeCode  int
	closeText  string
	dropReason string // failure reason for messages dropped by the close
	pingDue    bool   // the pinger asked for a ping; the writer sends it
	expTimer   *time.Timer

	// writeDeadline is the socket's write deadline as the writer last set
	// it; it moves only when half of -write-timeout has passed.
	writeDeadline time.Time
}

func newClient(h *Hub, conn *websocket.Conn, id Identity) *Client {
	c := &Client{hub: h, conn: conn, raw: conn.NetConn(), uid: id.UID, expiresAt: id.ExpiresAt}
	conn.SetCloseHandler(c.onClose)
	conn.SetPingHandler(c.onPing)
	return c
}

// start runs the connection after the hub registered it.
func (c *Client) start() {
	c.mu.Lock()
	if c.state.Load() == stateOpen && !c.expiresAt.IsZero() {
		c.expTimer = time.AfterFunc(time.Until(c.expiresAt), c.expire)
	}
	c.mu.Unlock()
	go c.readPump()
}

// enqueue queues m and returns whether it did. It never blocks: a full
// queue closes the connection as a slow consumer.
func (c *Client) enqueue(m *Message) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		c.hub.failed([]*Message{m}, c.uid, failClosed)
		return false
	}
	if int(c.queued.Load()) >= c.hub.cfg.SendBuffer {
		c.mu.Unlock()
		c.hub.failed([]*Message{m}, c.uid, failSlowConsumer)
		if c.close(websocket.CloseTryAgainLater, "slow consumer", failSlowConsumer, false) {
			c.hub.metrics.slowConsumers.Inc()
			c.hub.log.Info("slow consumer", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "queued", c.hub.cfg.SendBuffer)
		}
		return false
	}
	if c.queue == nil && c.spare != nil {
		c.queue, c.spare = c.spare, nil
	}
	c.queue = append(c.queue, m)
	c.queued.Add(1)
	c.hub.pending.Add(1)
	start := c.startWriterLocked()
	c.mu.Unlock()
	if start {
		go c.writeLoop()
	}
	return true
}

// startWriterLocked reports whether the caller must start a writer
// goroutine, and counts it. Callers hold mu and have seen a state other
// than stateClosed, so the readPump's count keeps the WaitGroup above zero.
func (c *Client) startWriterLocked() bool {
	if c.writing {
		return false
	}
	c.writing = true
	c.hub.wg.Add(1)
	return true
}

// close starts closing the connection with a close frame; with flush the
// queued messages are written first, otherwise they are dropped and counted
// under reason. It returns whether this call started the close (the first
// one wins). It never blocks.
func (c *Client) close(code int, text, reason string, flush bool) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return false
	}
	var dropped []*Message
	if flush {
		c.state.Store(stateClosing)
	} else {
		c.state.Store(stateClosingNow)
		dropped = c.takeQueueLocked()
	}
	c.closeCode, c.closeText, c.dropReason = code, text, reason
	start := c.startWriterLocked()
	c.mu.Unlock()

	c.hub.failed(dropped, c.uid, reason)
	if start {
		go c.writeLoop()
	}
	return true
}

// maxSpare bounds the queue buffer a connection keeps between bursts:
// enough that a steady stream allocates nothing, small enough that an
// idle connection holds little.
const maxSpare = 16

// takeQueueLocked empties the queue and uncounts it.
func (c *Client) takeQueueLocked() []*Message {
	q := c.queue
	c.queue = nil
	c.queued.Add(-int32(len(q)))
	c.hub.pending.Add(-int64(len(q)))
	return q
}

// abort drops the socket at once (shutdown timeout); readPump then tears
// the connection down.
func (c *Client) abort() {
	// The error is of no use: the socket is gone either way.
	_ = c.conn.Close()
}

func (c *Client) expire() {
	c.close(websocket.ClosePolicyViolation, "token expired", failClosed, false)
}

// writeLoop is the writer goroutine: it writes queued messages until the
// queue is empty, then exits, or writes the close frame when the client
// is closing.
func (c *Client) writeLoop() {
	defer c.hub.wg.Done()
	var batch []*Message
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

// writeBatch writes batch in order, every frame in one writev: each
// message is still its own frame, but a connection with several messages
// queued (a burst, or a multicast under load) pays one system call for
// all of them. It returns false when the socket failed; it was then
// closed, and readPump tears the connection down.
func (c *Client) writeBatch(batch []*Message) bool {
	c.wmu.Lock()
	if c.state.Load() >= stateClosingNow {
		c.wmu.Unlock()
		c.dropBatch(batch)
		return true
	}
	iov := c.hub.iovs.Get().(*net.Buffers)
	bufs := (*iov)[:0]
	for _, m := range batch {
		bufs = append(bufs, m.header(), m.Data)
	}
	c.setWriteDeadline(time.Now())
	*iov = bufs // WriteTo consumes *iov; bufs keeps the buffers to clear
	n, err := iov.WriteTo(c.raw)
	c.wmu.Unlock()
	clear(bufs) // let the messages go
	*iov = bufs[:0]
	c.hub.iovs.Put(iov)

	written := 0 // messages whose whole frame went out
	for _, m := range batch {
		if n < m.frameLen() {
			break
		}
		n -= m.frameLen()
		written++
	}
	c.queued.Add(-int32(len(batch)))
	c.hub.pending.Add(-int64(len(batch)))
	now := time.Now()
	for _, m := range batch[:written] {
		c.hub.delivered(m, c.uid, now)
	}
	if err != nil {
		c.hub.failed(batch[written:written+1], c.uid, failWriteError)
		c.hub.failed(batch[written+1:], c.uid, failClosed)
		c.hub.log.Debug("write failed", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "err", err)
		c.abort()
		return false
	}
	return true
}

// dropBatch uncounts messages the writer took but will not write.
func (c *Client) dropBatch(ms []*Message) {
	if len(ms) == 0 {
		return
	}
	c.queued.Add(-int32(len(ms)))
	c.hub.pending.Add(-int64(len(ms)))
	c.mu.Lock()
	reason := c.dropReason
	c.mu.Unlock()
	if reason == "" {
		reason = failClosed
	}
	c.hub.failed(ms, c.uid, reason)
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
// next frames (see setWriteDeadline).
func (c *Client) onPing(data string) error {
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
	start := c.startWriterLocked()
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

// readPump reads and discards what the client sends (the article's), which
// also answers pings and handles close frames. A client silent for
// PongWait is gone: the deadline ends the read and the connection.
func (c *Client) readPump() {
	defer c.hub.wg.Done()
	defer c.teardown()
	c.conn.SetReadLimit(maxReadSize)
	c.extendDeadline()
	c.conn.SetPongHandler(c.onPong)
	for {
		if _, _, err := c.conn.NextReader(); err != nil {
			c.logClosed(err)
			return
		}
		c.extendDeadline()
	}
}

func (c *Client) onPong(string) error {
	c.extendDeadline()
	return nil
}

// extendDeadline gives an open connection another PongWait. A close that
// started meanwhile keeps its shorter grace.
func (c *Client) extendDeadline() {
	if c.state.Load() != stateOpen {
		return
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	if c.state.Load() != stateOpen {
		c.graceDeadline()
	}
}

func (c *Client) logClosed(err error) {
	if !c.hub.log.Enabled(context.Background(), slog.LevelDebug) {
		return // spare the RemoteAddr string on every close
	}
	c.hub.log.Debug("connection closed", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "reason", err.Error())
}

// teardown ends the connection: no more messages, timers stopped, socket
// closed, unregistered. Messages still queued are counted as failed.
func (c *Client) teardown() {
	c.mu.Lock()
	c.state.Store(stateClosed)
	dropped := c.takeQueueLocked()
	if c.expTimer != nil {
		c.expTimer.Stop()
	}
	c.mu.Unlock()

	c.hub.failed(dropped, c.uid, failClosed)
	c.abort()
	c.hub.Unregister(c)
}
