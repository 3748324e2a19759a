package main

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
	"go-pusher/message"
)

var (
	errConnLimit    = errors.New("connection limit")
	errShuttingDown = errors.New("server shutting down")
)

// hubConfig holds the settings every connection of a hub shares, so that
// a Client carries a pointer to its hub instead of its own copy.
type hubConfig struct {
	MaxConnsPerUser int
	SendBuffer      int
	PingInterval    time.Duration
	PongWait        time.Duration
	WriteTimeout    time.Duration
}

// hubEvents hears when a uid gains its first open connection here and
// loses its last one (history marks the uid idle; cluster mode subscribes
// and unsubscribes). The calls come from the hub goroutine and must not
// block.
type hubEvents interface {
	UserOnline(uid string)
	UserOffline(uid string)
}

// Hub owns the uid → connections map (the article's userClients). Its run
// goroutine is the only code that changes the map (register, unregister),
// under mu; /send reads it under mu.RLock. The per-uid slices are
// copy-on-write: a reader may keep one after RUnlock, because nobody
// changes a slice once it is in the map.
//
// A connection leaves the map as soon as its close is decided (a slow
// consumer, an expired token, shutdown), not when its close frame is
// written: from then on it takes no message, and a uid whose connections
// are all closing is offline. The map therefore holds the open
// connections; the pinger's wheel holds every connection until it is torn
// down.
type Hub struct {
	cfg     hubConfig
	log     *slog.Logger
	metrics *metrics
	msgLog  message.Logger
	events  hubEvents // nil: nobody listens
	// tokens checks the token of an in-band refresh (refresh.go).
	tokens tokenParser

	pinger     *pinger
	register   chan registration
	unregister chan *Client
	shutdown   chan chan []*Client
	quit       chan struct{} // closed by Shutdown to stop run
	done       chan struct{} // closed when run returns

	// leaving holds the connections whose close was decided, for run to
	// take out of the map; the deciding goroutine (a /send, a timer)
	// must not wait for run, so it appends here and kicks.
	leaveMu sync.Mutex
	leaving []*Client
	kick    chan struct{} // capacity 1
	// reannounce asks run to tell the events of every uid with a
	// connection again (Reannounce).
	reannounce atomic.Bool

	mu          sync.RWMutex
	userClients map[string][]*Client
	connections int

	// pending counts messages queued on connections and not yet written
	// (the article's gauge).
	pending atomic.Int64

	// The frames {"recovered": true} and {"recovered": false}.
	recoveredTrue, recoveredFalse *stream.Message

	// frames holds *[]byte for the JSON frames writePumps encode, and
	// iovs *net.Buffers for their writev, so that a write allocates
	// nothing and an idle connection holds no buffer.
	frames, iovs sync.Pool
	// pumps runs the connections' writePumps.
	pumps pumps

	// wg counts the goroutines of connections: readPumps (added when the
	// hub registers the client) and writePumps (added under the client's
	// lock while its readPump's count is held, so the counter is never
	// zero when they add).
	wg sync.WaitGroup
}

type registration struct {
	c      *Client
	result chan error
}

func newHub(cfg hubConfig, log *slog.Logger, m *metrics, msgLog message.Logger) *Hub {
	return &Hub{
		cfg:            cfg,
		log:            log,
		metrics:        m,
		msgLog:         msgLog,
		pinger:         newPinger(cfg.PingInterval),
		register:       make(chan registration),
		unregister:     make(chan *Client),
		shutdown:       make(chan chan []*Client),
		quit:           make(chan struct{}),
		done:           make(chan struct{}),
		kick:           make(chan struct{}, 1),
		userClients:    make(map[string][]*Client),
		frames:         sync.Pool{New: func() any { return new([]byte) }},
		iovs:           sync.Pool{New: func() any { return new(net.Buffers) }},
		recoveredTrue:  stream.NewMessage("", []byte(`{"recovered":true}`), time.Time{}),
		recoveredFalse: stream.NewMessage("", []byte(`{"recovered":false}`), time.Time{}),
	}
}

// run handles registrations until Shutdown, and runs the pinger. After a
// shutdown request it refuses new registrations but still handles
// unregistrations, so that closing connections can leave.
func (h *Hub) run() {
	defer close(h.done)
	go h.pinger.run()
	defer h.pinger.close()
	closing := false
	for {
		select {
		case r := <-h.register:
			if closing {
				r.result <- errShuttingDown
				continue
			}
			r.result <- h.add(r.c)
		case c := <-h.unregister:
			h.remove(c)
		case <-h.kick:
			h.leaveMu.Lock()
			cs := h.leaving
			h.leaving = nil
			h.leaveMu.Unlock()
			for _, c := range cs {
				h.remove(c)
			}
			if h.reannounce.Swap(false) && h.events != nil {
				for uid := range h.userClients { // only this goroutine changes the map
					h.events.UserOnline(uid)
				}
			}
		case reply := <-h.shutdown:
			closing = true
			reply <- h.all()
		case <-h.quit:
			return
		}
	}
}

// Register adds c to the map, or returns errConnLimit or errShuttingDown.
// On success the caller must start c (its readPump is counted already).
func (h *Hub) Register(c *Client) error {
	r := registration{c: c, result: make(chan error, 1)}
	select {
	case h.register <- r:
		return <-r.result
	case <-h.done:
		return errShuttingDown
	}
}

// Unregister removes c from the map; it is a no-op for a client that is
// not there. It waits for run.
func (h *Hub) Unregister(c *Client) {
	select {
	case h.unregister <- c:
	case <-h.done:
	}
}

// leave has run take c out of the map soon, without waiting for it: c's
// close was decided.
func (h *Hub) leave(c *Client) {
	h.leaveMu.Lock()
	h.leaving = append(h.leaving, c)
	h.leaveMu.Unlock()
	h.kickRun()
}

func (h *Hub) kickRun() {
	select {
	case h.kick <- struct{}{}:
	default: // run is kicked already and will see what there is
	}
}

// Reannounce tells the events (the cluster's presence) of every uid with
// a connection here again, as if each had just come: after Redis forgot
// this node. It runs on the hub's goroutine, between registrations, so a
// uid's announcement is in order with its own comings and goings. It
// never blocks.
func (h *Hub) Reannounce() {
	h.reannounce.Store(true)
	h.kickRun()
}

func (h *Hub) add(c *Client) error {
	// Only this goroutine changes the map, so cs stays what it is until
	// the insert below.
	cs := h.clients(c.uid)
	if len(cs) >= h.cfg.MaxConnsPerUser {
		return errConnLimit
	}
	// Before c is in the map: the events' listeners (history, the
	// cluster's subscriptions) must want uid by the time a message can be
	// queued on c, or the cluster would drop one as meant for nobody. And
	// the readPump's count before a writePump can add its own.
	if len(cs) == 0 && h.events != nil {
		h.events.UserOnline(c.uid)
	}
	h.wg.Add(1) // c's readPump
	next := make([]*Client, len(cs)+1)
	copy(next, cs)
	next[len(cs)] = c
	h.mu.Lock()
	h.userClients[c.uid] = next
	h.connections++
	h.mu.Unlock()
	h.pinger.add(c)
	return nil
}

func (h *Hub) remove(c *Client) {
	h.mu.Lock()
	cs := h.userClients[c.uid]
	i := slices.Index(cs, c)
	if i < 0 {
		h.mu.Unlock()
		return
	}
	last := len(cs) == 1
	if last {
		delete(h.userClients, c.uid)
	} else {
		h.userClients[c.uid] = slices.Delete(slices.Clone(cs), i, i+1)
	}
	h.connections--
	h.mu.Unlock()

	if last && h.events != nil {
		h.events.UserOffline(c.uid)
	}
}

func (h *Hub) all() []*Client {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*Client, 0, h.connections)
	for _, cs := range h.userClients {
		out = append(out, cs...)
	}
	return out
}

// clients returns the connections of uid in the map. The slice must not
// be changed.
func (h *Hub) clients(uid string) []*Client {
	h.mu.RLock()
	cs := h.userClients[uid]
	h.mu.RUnlock()
	return cs
}

// uids returns the uids with a connection here.
func (h *Hub) uids() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return slices.Collect(maps.Keys(h.userClients))
}

// Open reports whether uid has a connection here that takes messages.
// (A connection whose close was decided leaves the map soon after; until
// then its state says it.)
func (h *Hub) Open(uid string) bool {
	for _, c := range h.clients(uid) {
		if c.state.Load() == stateOpen {
			return true
		}
	}
	return false
}

// Deliver queues it on each connection of uid. It never blocks: a
// connection whose queue is full is closed as a slow consumer instead. A
// message no connection of uid took is logged as failed for uid.
func (h *Hub) Deliver(uid string, it stream.Item) {
	n := 0
	for _, c := range h.clients(uid) {
		if c.enqueue(it) {
			n++
		}
	}
	if n == 0 {
		h.msgLog.Update(it.M.ID, uid, message.StatusFailed)
	}
}

// Resync closes uid's format=json connections with 1012: cluster mode
// could not replay what they missed during a Redis outage, and they learn
// it by coming back with since=.
func (h *Hub) Resync(uid string) {
	for _, c := range h.clients(uid) {
		if c.json {
			c.close(websocket.CloseServiceRestart, "missed messages: reconnect with since", failClosed, false)
		}
	}
}

// Connections returns the number of open registered connections.
func (h *Hub) Connections() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.connections
}

// Users returns the number of uids with at least one open connection.
func (h *Hub) Users() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.userClients)
}

// Pending returns the number of queued messages not yet written.
func (h *Hub) Pending() int64 { return h.pending.Load() }

// Shutdown stops registrations, closes every connection with 1001 after
// its queue is flushed, and waits for the connections' goroutines. When
// ctx ends first it closes the remaining sockets at once (their goroutines
// then end promptly) and returns ctx's error. It stops run last, so that
// closing connections can still unregister.
func (h *Hub) Shutdown(ctx context.Context) error {
	reply := make(chan []*Client, 1)
	select {
	case h.shutdown <- reply:
	case <-h.done:
		return nil
	}
	for _, c := range <-reply {
		c.close(websocket.CloseGoingAway, "server shutting down", failClosed, true)
	}

	waited := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(waited)
	}()
	var err error
	select {
	case <-waited:
	case <-ctx.Done():
		err = ctx.Err()
		// Every connection not torn down yet is in the pinger's wheel,
		// those that were closing before shutdown included.
		h.pinger.each((*Client).abort)
		<-waited
	}
	h.pumps.stop()
	close(h.quit)
	<-h.done
	return err
}

// delivered records that m was written to a connection of uid at now. A
// replayed message is not timed: its age is the client's absence.
func (h *Hub) delivered(m *stream.Message, uid string, now time.Time, replay bool) {
	h.metrics.sent.Inc()
	if !replay {
		h.metrics.deliveryDuration.Observe(now.Sub(m.Accepted).Seconds())
	}
	h.msgLog.Update(m.ID, uid, message.StatusDelivered)
}

// failed records that items were not written to a connection of uid.
func (h *Hub) failed(items []stream.Item, uid, reason string) {
	n := 0
	for _, it := range items {
		if !it.Ctl {
			h.msgLog.Update(it.M.ID, uid, message.StatusFailed)
			n++
		}
	}
	if n > 0 {
		h.metrics.failedCounter(reason).Add(float64(n))
	}
}

// recoveredFrame is the frame that ends a since= replay.
func (h *Hub) recoveredFrame(ok bool) *stream.Message {
	if ok {
		return h.recoveredTrue
	}
	return h.recoveredFalse
}
