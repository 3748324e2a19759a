// Package presence turns a node's "first connection of a uid" and "last
// connection of a uid gone" into online and offline events, with the
// offline one held back for a delay, so that a page reload or a network
// change (gone and back within the delay) sends nothing. Per uid, events
// alternate (online, offline, online...) and are emitted in order.
package presence

import (
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"time"
)

// Emit is where events go ("online" or "offline"), with the time of the
// transition and, in cluster mode, the event's number among the uid's
// events (0 on one node, where one sender keeps them in order).
type Emit func(event, uid string, at time.Time, seq int64)

// Tracker keeps the uids whose online event went out.
//
// Timers: one per uid whose last connection left, pending for the delay;
// Close stops them.
type Tracker struct {
	delay time.Duration
	emit  Emit
	now   func() time.Time

	mu     sync.Mutex
	uids   map[string]*entry // uids that are online, as last emitted
	closed bool
}

// entry is an online uid; timer is set while its offline is held back.
type entry struct {
	timer *time.Timer
	gen   int       // which Offline the pending timer belongs to
	left  time.Time // when the last connection left: the offline's time
}

// New makes a Tracker that calls emit for each event ("online" or
// "offline"), under its lock, in order: emit must not block.
func New(delay time.Duration, emit Emit, now func() time.Time) *Tracker {
	return &Tracker{delay: delay, emit: emit, now: now, uids: map[string]*entry{}}
}

// Online records that uid has a connection again (here, its first).
func (t *Tracker) Online(uid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if e, ok := t.uids[uid]; ok {
		// Back within the delay: its offline never goes out.
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
			e.gen++
		}
		return
	}
	t.uids[uid] = &entry{}
	t.emit("online", uid, t.now(), 0)
}

// Offline records that uid's last connection left. Its offline goes out
// after the delay unless it comes back, with the time it left.
func (t *Tracker) Offline(uid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.uids[uid]
	if t.closed || !ok || e.timer != nil {
		return
	}
	e.gen++
	gen := e.gen
	e.left = t.now()
	e.timer = time.AfterFunc(t.delay, func() { t.fire(uid, e, gen) })
}

func (t *Tracker) fire(uid string, e *entry, gen int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.uids[uid] != e || e.gen != gen {
		return // it came back meanwhile
	}
	delete(t.uids, uid)
	t.emit("offline", uid, e.left, 0)
}

// Close ends the tracking: a shutdown does not wait for the delay, so
// every uid still online goes offline now (with the time its last
// connection left, or now), and no event is emitted after it. A restart
// then starts with onlines, events still alternating.
func (t *Tracker) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.closed = true
	now := t.now()
	for uid, e := range t.uids {
		left := now
		if e.timer != nil {
			e.timer.Stop()
			left = e.left
		}
		t.emit("offline", uid, left, 0)
	}
	clear(t.uids)
}

// Store is the presence of a cluster, kept in Redis (cluster.Broker):
// Arrive reports whether the uid went online, and Leave holds its
// offline back for the delay; the store sends the due offlines itself.
type Store interface {
	// Arrive takes the transition's token: a retry (its first answer was
	// lost) answers as the first did. When the uid went online it returns
	// the online's number among the uid's events, else 0.
	Arrive(ctx context.Context, uid, token string) (int64, error)
	Leave(ctx context.Context, uid string, left time.Time, delay time.Duration) error
}

// Cluster tells a Store of this node's first and last connections of
// uids, in order, from a goroutine of its own, retrying while Redis does
// not answer, so that the hub never waits. It emits the onlines the
// store gives this node to send.
//
// Goroutines: the worker, started by NewCluster and stopped by Close.
type Cluster struct {
	store Store
	delay time.Duration
	emit  Emit
	log   *slog.Logger
	ops   chan op

	ctx      context.Context
	cancel   context.CancelFunc
	stop     chan struct{} // closed by Drain or Close: the worker ends
	done     chan struct{}
	stopOnce sync.Once
}

type op struct {
	uid    string
	online bool
	at     time.Time
	token  string // an online's, for its retries
}

// NewCluster runs a Cluster until Close. queue bounds the transitions
// waiting for Redis; past it they are dropped and logged.
func NewCluster(store Store, delay time.Duration, queue int, emit Emit, log *slog.Logger) *Cluster {
	c := &Cluster{store: store, delay: delay, emit: emit, log: log, ops: make(chan op, queue), stop: make(chan struct{}), done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.loop()
	return c
}

// Online records this node's first connection of uid.
func (c *Cluster) Online(uid string) {
	c.queue(op{uid: uid, online: true, at: time.Now(), token: rand.Text()})
}

// Offline records that this node's last connection of uid left.
func (c *Cluster) Offline(uid string) { c.queue(op{uid: uid, at: time.Now()}) }

func (c *Cluster) queue(o op) {
	select {
	case c.ops <- o:
	default:
		c.log.Warn("presence queue full: a transition is lost", "uid", o.uid, "online", o.online)
	}
}

// Close stops the worker; what it had not told Redis is lost.
func (c *Cluster) Close() {
	c.cancel()
	c.stopOnce.Do(func() { close(c.stop) })
	<-c.done
}

// Drain is a graceful shutdown's: it stops the worker, tells Redis what
// was queued, then that this node's connections of uids are all leaving
// (its offlines, held back the delay, are sent by the nodes that stay,
// unless the users come back there), within ctx.
func (c *Cluster) Drain(ctx context.Context, uids []string) {
	// The worker may be retrying against a Redis that does not answer:
	// ctx's end ends it too.
	defer context.AfterFunc(ctx, c.cancel)()
	c.stopOnce.Do(func() { close(c.stop) })
	<-c.done
	for {
		select {
		case o := <-c.ops:
			c.apply(ctx, o)
			continue
		default:
		}
		break
	}
	now := time.Now()
	for _, uid := range uids {
		c.apply(ctx, op{uid: uid, at: now})
	}
}

func (c *Cluster) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			return
		case o := <-c.ops:
			c.apply(c.ctx, o)
		}
	}
}

// apply tells the store of o, again and again while Redis does not
// answer (the order of a uid's transitions matters), until ctx ends.
func (c *Cluster) apply(base context.Context, o op) {
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(base, 5*time.Second)
		var seq int64
		var err error
		if o.online {
			seq, err = c.store.Arrive(ctx, o.uid, o.token)
		} else {
			err = c.store.Leave(ctx, o.uid, o.at, c.delay)
		}
		cancel()
		if err == nil {
			if seq > 0 {
				c.emit("online", o.uid, o.at, seq)
			}
			return
		}
		c.log.Warn("presence: redis did not take a transition; retrying", "uid", o.uid, "err", err, "retry_in", backoff)
		select {
		case <-base.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
