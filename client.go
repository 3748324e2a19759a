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

	// maxJSONReadSize is the largest message a format=json client may
	// send: {"refresh": "<JWT>"}, and identity providers' tokens are
	// large (refresh.go).
	maxJSONReadSize = 8 << 10

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
	if c.json {
		return c.consumeJSON(r)
	}
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
		c.hub.pumps.start(c)
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

// writePump writes the connection's frames, and is the only code that
// does: the queued messages in order, a pong for the peer's latest ping,
// a ping the pinger asked for, and at the end the close frame. It starts
// when there is something to write and returns when there is nothing
// left, so an idle connection has no writePump; after the close frame it
// never starts again. Messages queued together go out in one writev.
func (c *Client) writePump() {
	defer c.hub.wg.Done()
	var batch []stream.Item
	for {
		c.mu.Lock()
		if batch != nil && cap(batch) <= maxSpare {
			clear(batch) // let the messages go
			c.spare = batch[:0]
		}
		batch = c.queue
		c.queue, c.spare = c.spare, nil
		st := c.state.Load()
		ping := c.pingDue && st == stateOpen
		pong, pongDue := c.pong, c.pongDue && st < stateClosingNow
		c.pingDue, c.pongDue, c.pong = false, false, ""
		if len(batch) == 0 && !ping && !pongDue {
			if st == stateOpen || st == stateClosed {
				c.writing = false
				c.mu.Unlock()
				return
			}
			// Closing: writing stays true, so no writePump starts again.
			code, text := c.closeCode, c.closeText
			c.mu.Unlock()
			c.writeClose(code, text)
			return
		}
		c.mu.Unlock()
		if pongDue && !c.writeControl(stream.OpPong, pong) {
			c.failAll(batch)
			return
		}
		if len(batch) > 0 && !c.writeBatch(batch) {
			return
		}
		if ping && !c.writeControl(stream.OpPing, "") {
			return
		}
	}
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
