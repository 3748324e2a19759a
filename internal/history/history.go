// Package history owns the in-memory history of a single node: for each
// uid an epoch, the last offset given and its latest messages, so that a
// client that reconnects with ?since= gets what it missed. It gives
// offsets, stores messages and hands them to the node's connections under
// one lock, so every connection of a uid sees offset order. It never
// holds a connection: it reaches them through Conns.
package history

import (
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"go-pusher/internal/stream"
)

// Conns is what history needs of this node's connections (the hub).
type Conns interface {
	// Open reports whether uid has a connection here that takes messages.
	Open(uid string) bool
	// Deliver queues it on uid's connections here. It must not block.
	Deliver(uid string, it stream.Item)
}

// Limits bound the memory history.
type Limits struct {
	Size     int           // messages kept per uid (0: none)
	TTL      time.Duration // how long a message is kept
	MaxBytes int64         // all uids together
}

// entryOverhead is what a history entry costs beside its message and id.
const entryOverhead = 96

// stateOverhead is what an idle uid's state costs beside its uid.
const stateOverhead = 128

// IdleStateTTL is how long a uid without connections keeps its epoch and
// offset once its messages are gone (the cluster keeps them as long in
// Redis).
const IdleStateTTL = 24 * time.Hour

// maxFreeEntries bounds the free list of entries.
const maxFreeEntries = 4096

// Memory is the history of a single node. Memory is bounded by Size per
// uid, TTL, and MaxBytes in all; eviction is oldest first: every entry is
// also on one list in the order it was stored.
//
// A uid without connections keeps its epoch and last offset for
// IdleStateTTL after its messages expired, so that a client that comes
// back after a quiet spell (a laptop asleep) recovers with nothing to
// replay rather than a {"recovered": false}. Such idle states are on a
// list of their own, oldest first, and count stateOverhead bytes each
// against MaxBytes, but together never more than a quarter of it: idle
// uids cannot crowd out the messages of connected ones. A dropped state
// comes back with a new epoch, so an offset is never reused.
//
// Lock order: Memory's lock, then whatever Conns takes.
type Memory struct {
	lim   Limits
	conns Conns
	log   *slog.Logger
	now   func() time.Time

	mu     sync.Mutex
	users  map[string]*uidLog
	oldest *entry // the list of every entry, oldest first
	newest *entry
	bytes  int64 // messages and idle states
	count  int
	// idle lists the uids without a connection, the longest idle first;
	// idleBytes is their share of bytes.
	idleOldest, idleNewest *uidLog
	idleBytes              int64
	// free holds removed entries for reuse (linked by next), at most
	// maxFreeEntries: a busy history stores one entry as it drops one.
	free  *entry
	nfree int

	evicted *prometheus.CounterVec
	// evicted's counters, looked up once: a multicast to 1,000 uids
	// evicts 1,000 entries.
	byCount, byAge, byBytes prometheus.Counter

	stop chan struct{} // closed by Close: the sweeper ends
	done chan struct{} // made by Start, closed when the sweeper has ended
	once sync.Once
}

// uidLog is one uid's history.
type uidLog struct {
	uid   string
	epoch string
	last  uint64 // the offset of the latest message
	// ring holds the kept entries, n of them from head on, oldest first;
	// it grows up to Size and is let go once age or the byte budget
	// empties it. Dropping the oldest moves nothing.
	ring    []*entry
	head, n int

	// On the idle list while the uid has no connection.
	inIdle             bool
	idleSince          time.Time
	idlePrev, idleNext *uidLog
}

// entry is a stored message of one uid.
type entry struct {
	uid        string
	off        uint64
	m          *stream.Message
	size       int64
	prev, next *entry // the list of every entry
}

// at returns the i-th kept entry, oldest first.
func (u *uidLog) at(i int) *entry { return u.ring[(u.head+i)%len(u.ring)] }

// push adds e as the newest entry; the caller keeps n below size.
func (u *uidLog) push(e *entry, size int) {
	if u.n == len(u.ring) {
		grown := make([]*entry, min(max(4, 2*len(u.ring)), size))
		for i := range u.n {
			grown[i] = u.at(i)
		}
		u.ring, u.head = grown, 0
	}
	u.ring[(u.head+u.n)%len(u.ring)] = e
	u.n++
}

// dropOldest forgets the oldest entry.
func (u *uidLog) dropOldest() {
	u.ring[u.head] = nil
	u.head = (u.head + 1) % len(u.ring)
	u.n--
}

// New returns an empty history that reaches connections through conns
// and registers its metrics on reg. Start runs its sweeper.
func New(lim Limits, conns Conns, log *slog.Logger, reg prometheus.Registerer) *Memory {
	h := &Memory{
		lim:   lim,
		conns: conns,
		log:   log,
		now:   time.Now,
		users: map[string]*uidLog{},
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_history_evicted_total",
			Help: "Messages dropped from history, by reason: count (-history-size), age (-history-ttl), bytes (-history-bytes).",
		}, []string{"reason"}),
		stop: make(chan struct{}),
	}
	h.byCount = h.evicted.WithLabelValues("count")
	h.byAge = h.evicted.WithLabelValues("age")
	h.byBytes = h.evicted.WithLabelValues("bytes")
	reg.MustRegister(h.evicted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_history_messages", Help: "Messages held in history (memory, this node).",
		}, func() float64 { n, _ := h.Size(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_history_bytes", Help: "Bytes of messages held in history, as counted against -history-bytes.",
		}, func() float64 { _, b := h.Size(); return float64(b) }),
	)
	return h
}

// Size returns the messages held and their bytes (idle states included).
func (h *Memory) Size() (messages int, bytes int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count, h.bytes
}
