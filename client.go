package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
)

const (
	// maxReadSize is the largest message a client may send; clients have
	// nothing to say to the server (the article's readPump discards it), so
	// anything larger is closed with 1009.
	maxReadSize = 512

	// closeGrace is how long a connection waits for the close frame it is
	// owed: the peer's answer to the server's, or the writePump's answer
	// to the peer's.
	closeGrace = time.Second
)

// The states of a Client. Transitions happen under Client.mu and only go
// forward, though not always one step; state is atomic so that the hub
// and the writePump can read it without the lock. Every state but open
// takes no new message.
const (
	stateOpen       int32 = iota
	stateClosing          // write what is queued, then the close frame
	stateClosingNow       // drop what is queued, write the close frame
	stateClosed           // torn down: the socket is closed
)

// Client is one WebSocket connection of a uid.
//
// It runs the article's two goroutines. readPump runs for the whole life
// of the connection: it reads (and discards) what the client sends, sees
// pings, pongs and close frames, and ends the connection (teardown).
// writePump is the only code that writes to the socket: messages, pings,
// pongs and the close frame. It runs while there is something to write
// and exits once there is not, so that an idle connection costs one
// goroutine, not two; enqueue, requestPing, onPing and close start it
// again. Both are counted in the hub's WaitGroup.
type Client struct {
	hub       *Hub
	conn      *websocket.Conn // for readPump; gorilla's own writes are dropped (see guardConn)
	sock      net.Conn        // the socket under conn, written by writePump alone
	uid       string
	expiresAt time.Time
	json      bool // format=json: frames carry id and offset

	state     atomic.Int32
	queued    atomic.Int32 // live messages queued or being written: at most SendBuffer
	closeSent atomic.Bool  // writePump wrote the close frame: the peer has closeGrace to answer

	mu         sync.Mutex
	queue      []stream.Item // not yet taken by writePump
	spare      []stream.Item // writePump's last batch, emptied, for the next queue
	writing    bool          // a writePump runs (or wrote the close frame: none starts again)
	held       bool          // replaying history: queue live messages, start no writePump
	floor      stream.Position
	closeCode  int
	closeText  string
	dropReason string        // failure reason for messages dropped by the close
	pingDue    bool          // the pinger asked for a ping
	pongDue    bool          // the peer pinged: pong carries its payload
	pong       string        //
	closeDone  chan struct{} // made by readPump waiting for the close frame; closed once it is written
	expTimer   *time.Timer

	// writeDeadline is the socket's write deadline as writePump last set
	// it; it moves only when half of -write-timeout has passed.
	writeDeadline time.Time
}

// clientOptions are what a /ws request asked for.
type clientOptions struct {
	json bool // format=json
	hold bool // a since= replay follows registration (see release)
}

func newClient(h *Hub, conn *websocket.Conn, sock net.Conn, id Identity, opt clientOptions) *Client {
	return &Client{hub: h, conn: conn, sock: sock, uid: id.UID, expiresAt: id.ExpiresAt, json: opt.json, held: opt.hold}
}

// start runs the connection after the hub registered it. (A connection
// the hub refused keeps gorilla's handlers for its refusal.)
func (c *Client) start() {
	c.conn.SetCloseHandler(c.onClose)
	c.conn.SetPingHandler(c.onPing)
	c.conn.SetPongHandler(c.onPong)
	c.mu.Lock()
	if c.state.Load() == stateOpen && !c.expiresAt.IsZero() {
		c.expTimer = time.AfterFunc(time.Until(c.expiresAt), c.expire)
	}
	c.mu.Unlock()
	go c.readPump()
}

// enqueue queues it and returns whether it did. It never blocks: a full
// queue closes the connection as a slow consumer.
func (c *Client) enqueue(it stream.Item) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		c.hub.failed([]stream.Item{it}, c.uid, failClosed)
		return false
	}
	if int(c.queued.Load()) >= c.hub.cfg.SendBuffer {
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
	c.queued.Add(1)
	c.hub.pending.Add(1)
	start := !c.held && c.startWriterLocked()
	c.mu.Unlock()
	if start {
		go c.writePump()
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
		go c.writePump()
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
		go c.writePump()
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
	c.close(websocket.ClosePolicyViolation, "token expired", failClosed, false)
}

// readPump reads and discards what the client sends (the article's),
// which also brings pings, pongs and close frames to their handlers. A
// client silent for PongWait is gone: the deadline ends the read and the
// connection.
//
// The 512-byte limit is enforced here rather than by gorilla's
// SetReadLimit, which would write the 1009 close frame itself; here the
// close goes through writePump, after what it has queued.
func (c *Client) readPump() {
	defer c.teardown() // which ends with hub.wg.Done
	c.extendDeadline()
	for {
		_, r, err := c.conn.NextReader()
		if err != nil {
			c.readFailed(err)
			return
		}
		if !c.consume(r) {
			return
		}
	}
}

// consume reads and drops a client message, and reports whether the
// connection goes on. It is a method of its own, not inlined, so that
// readPump's frame stays small: every idle connection's goroutine sits in
// readPump, and 48 bytes more there made the average stack pass 2 KiB, so
// that every goroutine started with 4 (Go sizes new stacks by the average).
//
//go:noinline
func (c *Client) consume(r io.Reader) bool {
	n, err := io.CopyN(io.Discard, r, maxReadSize+1)
	if n > maxReadSize {
		c.close(websocket.CloseMessageTooBig, "message too big", failClosed, false)
		return true // until the peer's close, or closeGrace
	}
	if err != nil && !errors.Is(err, io.EOF) {
		c.readFailed(err)
		return false
	}
	c.extendDeadline()
	return true
}

// readFailed ends the reading: the peer closed (onClose answered), broke
// the protocol (answered with 1002), or the socket is gone. readPump
// waits a little for the close frame the peer is owed before teardown
// closes the socket.
//
//go:noinline
func (c *Client) readFailed(err error) {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case errors.As(err, &ce):
		c.awaitCloseFrame()
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		// The socket is gone: nobody to write a close frame to.
	default:
		// gorilla reports a frame that breaks RFC 6455 (its own 1002
		// close frame was dropped: see guardConn).
		c.close(websocket.CloseProtocolError, "protocol error", failClosed, false)
		c.awaitCloseFrame()
	}
	if c.hub.log.Enabled(context.Background(), slog.LevelDebug) {
		c.hub.log.Debug("connection closed", "uid", c.uid, "remote", c.sock.RemoteAddr().String(), "reason", err.Error())
	}
}

// awaitCloseFrame waits, at most closeGrace, for writePump to write the
// close frame of a close that was decided.
func (c *Client) awaitCloseFrame() {
	c.mu.Lock()
	if c.closeSent.Load() || c.state.Load() == stateOpen {
		c.mu.Unlock()
		return
	}
	if c.closeDone == nil {
		c.closeDone = make(chan struct{})
	}
	done := c.closeDone
	c.mu.Unlock()
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// onClose is the close handler: the peer sent a close frame. The
// connection takes nothing more; writePump answers with the same code,
// unless the server's own close frame is under way.
func (c *Client) onClose(code int, _ string) error {
	if code == websocket.CloseNoStatusReceived {
		code = websocket.CloseNormalClosure
	}
	if !c.close(code, "", failClosed, false) {
		c.hurry()
	}
	return nil
}

// hurry turns a close that flushes the queue first into one that drops
// it: the peer closed and reads no more.
func (c *Client) hurry() {
	c.mu.Lock()
	if c.state.Load() != stateClosing {
		c.mu.Unlock()
		return
	}
	c.state.Store(stateClosingNow)
	dropped := c.takeQueueLocked()
	reason := c.dropReason
	c.mu.Unlock()
	c.hub.failed(dropped, c.uid, reason)
}

// onPing has writePump answer a client's ping (gorilla's own handler
// would write the pong from this goroutine). Only the latest ping is
// answered, as RFC 6455 section 5.5.3 allows.
func (c *Client) onPing(data string) error {
	c.extendDeadline()
	c.mu.Lock()
	if c.state.Load() == stateClosed || c.closeSent.Load() {
		c.mu.Unlock()
		return nil
	}
	c.pongDue, c.pong = true, data
	start := !c.held && c.startWriterLocked()
	c.mu.Unlock()
	if start {
		go c.writePump()
	}
	return nil
}

func (c *Client) onPong(string) error {
	c.extendDeadline()
	return nil
}

// extendDeadline gives the connection another PongWait, until the close
// frame is written: from then on it has closeGrace. (A flush before the
// close frame may take longer than closeGrace; it keeps PongWait.)
func (c *Client) extendDeadline() {
	if c.closeSent.Load() {
		return
	}
	// Deadlines on an open socket cannot fail; on a closed one readPump
	// is ending anyway.
	_ = c.sock.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	if c.closeSent.Load() {
		c.graceDeadline() // written meanwhile: its grace wins
	}
}

func (c *Client) graceDeadline() {
	_ = c.sock.SetReadDeadline(time.Now().Add(closeGrace))
}

// teardown ends the connection: no more messages, timers stopped, socket
// closed, unregistered. Messages still queued are counted as failed. It
// is readPump's only defer (a second would grow every idle stack; see
// consume) and ends by releasing readPump's count in the hub.
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
	c.hub.wg.Done() // the readPump's count
}
