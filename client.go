package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
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
// forward, though not always one step (a peer's close frame goes from
// open to closed); state is atomic so the writer can check it between
// writes without the lock. After a write failure writing stays true, so
// that no writer starts again on a dead socket.
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
	raw       net.Conn        // the socket under conn: data frames are written here
	rc        syscall.RawConn // raw's, for writeNow; nil if it has none
	uid       string
	expiresAt time.Time
	json      bool // format=json: frames carry id and offset

	// wmu orders data frames against the close frame the readPump sends
	// back when the peer closes: no data frame may follow a close.
	wmu sync.Mutex

	state     atomic.Int32
	queued    atomic.Int32 // live messages queued or being written: at most SendBuffer
	closeSent atomic.Bool  // the writer wrote the close frame: readPump has closeGrace left

	mu         sync.Mutex
	queue      []qitem  // not yet taken by the writer
	spare      []qitem  // the writer's last batch, emptied, for the next queue
	writing    bool     // a writer goroutine runs (or the close frame was handed to one)
	held       bool     // replaying history: queue live messages, start no writer
	floor      position // the last replayed message: live copies up to it are dropped
	closeCode  int
	closeText  string
	dropReason string // failure reason for messages dropped by the close
	pingDue    bool   // the pinger asked for a ping; the writer sends it
	expTimer   *time.Timer

	// writeDeadline is the socket's write deadline as the writer last set
	// it; it moves only when half of -write-timeout has passed.
	writeDeadline time.Time
}

// clientOptions are what a /ws request asked for.
type clientOptions struct {
	json bool // format=json
	hold bool // a since= replay follows registration (see release)
}

func newClient(h *Hub, conn *websocket.Conn, id Identity, opt clientOptions) *Client {
	c := &Client{hub: h, conn: conn, raw: conn.NetConn(), uid: id.UID, expiresAt: id.ExpiresAt, json: opt.json, held: opt.hold}
	if sc, ok := c.raw.(syscall.Conn); ok {
		c.rc, _ = sc.SyscallConn() // fails only on a closed conn: writeNow then hands off
	}
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

// enqueue queues it and returns whether it did. It never blocks: a full
// queue closes the connection as a slow consumer. On an idle connection it
// claims the writer and leaves it in out for the caller to write.
func (c *Client) enqueue(it qitem, out *outbox) bool {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		c.hub.failed([]qitem{it}, c.uid, failClosed)
		return false
	}
	if int(c.queued.Load()) >= c.hub.cfg.SendBuffer {
		c.mu.Unlock()
		c.hub.failed([]qitem{it}, c.uid, failSlowConsumer)
		if c.close(websocket.CloseTryAgainLater, "slow consumer", failSlowConsumer, false) {
			c.hub.metrics.slowConsumers.Inc()
			c.hub.log.Info("slow consumer", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "queued", c.hub.cfg.SendBuffer)
		}
		return false
	}
	if it.off != 0 && it.off <= c.floor.n && it.epoch == c.floor.epoch {
		// The replay had it already. In cluster mode a message published
		// between the subscription and the history read comes twice: in
		// the replay and, later, live.
		c.mu.Unlock()
		return true
	}
	if !c.writing && !c.held && !c.pingDue && len(c.queue) == 0 && len(it.m.Data) <= maxInlineData {
		// An idle connection: the caller writes it (see writeNow).
		c.writing = true
		c.hub.wg.Add(1)
		c.queued.Add(1)
		c.hub.pending.Add(1)
		c.mu.Unlock()
		*out = append(*out, pendingWrite{c, it})
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
		go c.writeLoop()
	}
	return true
}

// release ends a since= replay: it puts the replayed history and the
// recovered frame before the live messages queued meanwhile, dropping the
// live ones the replay covers (since's epoch, offsets up to the replay's
// last), and lets the writer go. With ok false only {"recovered": false}
// goes first. Offsets of one uid only grow, so what is left is in order,
// without a gap (the connection was registered before history was read)
// and without a duplicate.
func (c *Client) release(replay []qitem, ok bool, since position) {
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
	last := since.n
	if n := len(replay); n > 0 {
		last = replay[n-1].off
	}
	out := make([]qitem, 0, len(replay)+1+len(c.queue))
	out = append(out, replay...)
	out = append(out, qitem{m: c.hub.recoveredFrame(ok), ctl: true})
	var skipped []qitem
	for _, it := range c.queue {
		if ok && it.epoch == since.epoch && it.off <= last {
			skipped = append(skipped, it)
			continue
		}
		out = append(out, it)
	}
	c.queue = out
	if ok {
		c.floor = position{since.epoch, last}
	}
	c.hub.pending.Add(int64(len(replay) + 1))
	start := c.startWriterLocked()
	c.mu.Unlock()
	c.uncount(skipped) // delivered by the replay instead
	if start {
		go c.writeLoop()
	}
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
	var dropped []qitem
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
func (c *Client) takeQueueLocked() []qitem {
	q := c.queue
	c.queue = nil
	c.uncount(q)
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

// readPump reads and discards what the client sends (the article's), which
// also answers pings and handles close frames. A client silent for
// PongWait is gone: the deadline ends the read and the connection.
//
// The 512-byte limit is enforced here rather than by gorilla's
// SetReadLimit: gorilla would write the 1009 close frame itself, from this
// goroutine, while the writer may still be writing data frames after it.
// Here the close goes through the writer, after what it has queued. (A
// malformed frame still gets gorilla's own 1002.)
func (c *Client) readPump() {
	defer c.teardown() // which ends with hub.wg.Done
	c.extendDeadline()
	c.conn.SetPongHandler(c.onPong)
	for {
		_, r, err := c.conn.NextReader()
		if err != nil {
			c.logClosed(err)
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
	if err != nil && err != io.EOF {
		c.logClosed(err)
		return false
	}
	c.extendDeadline()
	return true
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
	_ = c.conn.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	if c.closeSent.Load() {
		c.graceDeadline() // written meanwhile: its grace wins
	}
}

func (c *Client) logClosed(err error) {
	if !c.hub.log.Enabled(context.Background(), slog.LevelDebug) {
		return // spare the RemoteAddr string on every close
	}
	c.hub.log.Debug("connection closed", "uid", c.uid, "remote", c.conn.RemoteAddr().String(), "reason", err.Error())
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
