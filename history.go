package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// position is a place in a uid's stream of messages: the epoch that names
// the history and the offset n counted in it (1, 2, 3, ...).
type position struct {
	epoch string
	n     uint64
}

func (p position) String() string { return p.epoch + ":" + strconv.FormatUint(p.n, 10) }

// maxEpochLen bounds the epoch of a since parameter.
const maxEpochLen = 32

// parsePosition reads "<epoch>:<n>" as sent in ?since=.
func parsePosition(s string) (position, error) {
	epoch, n, ok := strings.Cut(s, ":")
	if !ok || epoch == "" || len(epoch) > maxEpochLen || strings.ContainsFunc(epoch, func(r rune) bool {
		return !('0' <= r && r <= '9' || 'a' <= r && r <= 'z')
	}) {
		return position{}, errors.New("want <epoch>:<n>, as in the offset of a message")
	}
	v, err := strconv.ParseUint(n, 10, 64)
	if err != nil {
		return position{}, fmt.Errorf("offset %q is not a number", n)
	}
	return position{epoch, v}, nil
}

// newEpoch returns a fresh random epoch.
func newEpoch() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// historyLimits bound the memory history.
type historyLimits struct {
	Size     int           // messages kept per uid (0: none)
	TTL      time.Duration // how long a message is kept
	MaxBytes int64         // all uids together
}

// entryOverhead is what a history entry costs beside its message and id.
const entryOverhead = 96

// stateOverhead is what an idle uid's state costs beside its uid.
const stateOverhead = 128

// idleStateTTL is how long a uid without connections keeps its epoch and
// offset once its messages are gone, as in Redis (redisStateTTL).
const idleStateTTL = 24 * time.Hour

// memHistory is the history of a single node: for each uid an epoch, the
// last offset given, and its latest messages. Offsets are given, messages
// stored and queued on the uid's connections under one lock, so every
// connection of a uid sees offset order. Memory is bounded by Size per
// uid, TTL, and MaxBytes in all; eviction is oldest first: every entry is
// also on one list in the order it was stored.
//
// A uid without connections keeps its epoch and last offset for
// idleStateTTL after its messages expired, so that a client that comes
// back after a quiet spell (a laptop asleep) recovers with nothing to
// replay rather than a {"recovered": false}. Such idle states are on a
// list of their own, oldest first, and count stateOverhead bytes each
// against MaxBytes, but together never more than a quarter of it: idle
// uids cannot crowd out the messages of connected ones. A dropped state
// comes back with a new epoch, so an offset is never reused.
type memHistory struct {
	lim historyLimits
	now func() time.Time

	mu     sync.Mutex
	users  map[string]*uidLog
	oldest *histEntry // the list of every entry, oldest first
	newest *histEntry
	bytes  int64 // messages and idle states
	count  int
	// idle lists the uids without a connection, the longest idle first;
	// idleBytes is their share of bytes.
	idleOldest, idleNewest *uidLog
	idleBytes              int64
	// free holds removed entries for reuse (linked by next), at most
	// maxFreeEntries: a busy history stores one entry as it drops one.
	free  *histEntry
	nfree int

	evicted *prometheus.CounterVec
	// evicted's counters, looked up once: a multicast to 1,000 uids
	// evicts 1,000 entries.
	byCount, byAge, byBytes prometheus.Counter
	recovered               *prometheus.CounterVec
}

// uidLog is one uid's history.
type uidLog struct {
	uid   string
	epoch string
	last  uint64 // the offset of the latest message
	// ring holds the kept entries, n of them from head on, oldest first;
	// it grows up to Size and is let go once age or the byte budget
	// empties it. Dropping the oldest moves nothing.
	ring    []*histEntry
	head, n int

	// On the idle list while the uid has no connection.
	inIdle             bool
	idleSince          time.Time
	idlePrev, idleNext *uidLog
}

// histEntry is a stored message of one uid.
type histEntry struct {
	uid        string
	off        uint64
	m          *Message
	size       int64
	prev, next *histEntry // the list of every entry
}

// maxFreeEntries bounds memHistory's free list.
const maxFreeEntries = 4096

// at returns the i-th kept entry, oldest first.
func (u *uidLog) at(i int) *histEntry { return u.ring[(u.head+i)%len(u.ring)] }

// push adds e as the newest entry; the caller keeps n below size.
func (u *uidLog) push(e *histEntry, size int) {
	if u.n == len(u.ring) {
		grown := make([]*histEntry, min(max(4, 2*len(u.ring)), size))
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

func newMemHistory(lim historyLimits, now func() time.Time, reg prometheus.Registerer) *memHistory {
	h := &memHistory{
		lim:   lim,
		now:   now,
		users: map[string]*uidLog{},
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_history_evicted_total",
			Help: "Messages dropped from history, by reason: count (-history-size), age (-history-ttl), bytes (-history-bytes).",
		}, []string{"reason"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_recoveries_total",
			Help: "Reconnections with ?since=, by result: recovered (replayed without a gap) or failed ({\"recovered\": false}).",
		}, []string{"result"}),
	}
	h.byCount = h.evicted.WithLabelValues("count")
	h.byAge = h.evicted.WithLabelValues("age")
	h.byBytes = h.evicted.WithLabelValues("bytes")
	for _, r := range []string{"recovered", "failed"} {
		h.recovered.WithLabelValues(r)
	}
	reg.MustRegister(h.evicted, h.recovered,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_history_messages", Help: "Messages held in history (memory, this node).",
		}, func() float64 { h.mu.Lock(); defer h.mu.Unlock(); return float64(h.count) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_history_bytes", Help: "Bytes of messages held in history, as counted against -history-bytes.",
		}, func() float64 { h.mu.Lock(); defer h.mu.Unlock(); return float64(h.bytes) }),
	)
	return h
}

// deliver gives m the next offset of each uid that has a connection,
// stores it, and queues it on the uid's connections, all under the lock.
// It returns the uids that had no connection: nothing was stored for
// them.
func (h *memHistory) deliver(hub *Hub, m *Message, uids []string) (gone []string) {
	out := hub.getOutbox()
	defer hub.flush(out) // after the unlock: writes are system calls
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, uid := range uids {
		cs := hub.clients(uid)
		if len(cs) == 0 {
			gone = append(gone, uid)
			continue
		}
		it, err := h.appendLocked(uid, m)
		if err != nil {
			// Only crypto/rand can fail here; the message goes out without
			// an offset rather than not at all.
			hub.log.Error("history append failed", "uid", uid, "err", err)
		}
		hub.deliver(uid, cs, it, out)
	}
	h.evictLocked()
	return gone
}

func (h *memHistory) appendLocked(uid string, m *Message) (qitem, error) {
	u := h.users[uid]
	if u == nil {
		epoch, err := newEpoch()
		if err != nil {
			return qitem{m: m}, err
		}
		u = &uidLog{uid: uid, epoch: epoch}
		h.users[uid] = u
	}
	u.last++
	it := qitem{m: m, off: u.last, epoch: u.epoch}
	if h.lim.Size == 0 {
		return it, nil
	}
	if u.n == h.lim.Size {
		h.removeLocked(u.at(0), "count")
	}
	e := h.free
	if e != nil {
		h.free, h.nfree = e.next, h.nfree-1
	} else {
		e = new(histEntry)
	}
	*e = histEntry{uid: uid, off: u.last, m: m, size: int64(len(m.Data)+len(m.ID)) + entryOverhead, prev: h.newest}
	if h.newest != nil {
		h.newest.next = e
	} else {
		h.oldest = e
	}
	h.newest = e
	u.push(e, h.lim.Size)
	h.bytes += e.size
	h.count++
	return it, nil
}

// removeLocked drops e, which is the oldest entry of its uid.
func (h *memHistory) removeLocked(e *histEntry, reason string) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		h.oldest = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		h.newest = e.prev
	}
	if u := h.users[e.uid]; u != nil && u.n > 0 && u.at(0) == e {
		u.dropOldest()
		if u.n == 0 && reason != "count" {
			// Emptied by age or the byte budget: an idle uid holds no
			// array. (Not for "count": the append that follows refills it.)
			u.ring, u.head = nil, 0
		}
	}
	h.bytes -= e.size
	h.count--
	*e = histEntry{} // let the message go
	if h.nfree < maxFreeEntries {
		e.next, h.free = h.free, e
		h.nfree++
	}
	switch reason {
	case "count":
		h.byCount.Inc()
	case "age":
		h.byAge.Inc()
	default:
		h.byBytes.Inc()
	}
}

// evictLocked drops the oldest entries while over the byte budget or
// past their age, then idle states while still over the budget or idle
// for idleStateTTL. The oldest entry of all is the oldest of its uid.
func (h *memHistory) evictLocked() {
	now := h.now()
	cutoff := now.Add(-h.lim.TTL)
	for e := h.oldest; e != nil; e = h.oldest {
		if h.bytes > h.lim.MaxBytes {
			h.removeLocked(e, "bytes")
		} else if e.m.Accepted.Before(cutoff) {
			h.removeLocked(e, "age")
		} else {
			break
		}
	}
	stateCutoff := now.Add(-max(idleStateTTL, h.lim.TTL)) // as redisStateTTL
	for u := h.idleOldest; u != nil; u = h.idleOldest {
		if h.bytes <= h.lim.MaxBytes && h.idleBytes <= h.lim.MaxBytes/4 && !u.idleSince.Before(stateCutoff) {
			return
		}
		h.unidleLocked(u)
		for u.n > 0 {
			h.removeLocked(u.at(0), "bytes")
		}
		delete(h.users, u.uid)
	}
}

// userOnline takes uid off the idle list: it has a connection again.
func (h *memHistory) userOnline(uid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if u := h.users[uid]; u != nil && u.inIdle {
		h.unidleLocked(u)
	}
}

// userOffline puts uid on the idle list: it lost its last connection.
func (h *memHistory) userOffline(uid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.users[uid]
	if u == nil || u.inIdle {
		return
	}
	u.inIdle, u.idleSince = true, h.now()
	u.idlePrev = h.idleNewest
	if h.idleNewest != nil {
		h.idleNewest.idleNext = u
	} else {
		h.idleOldest = u
	}
	h.idleNewest = u
	h.bytes += stateOverhead + int64(len(u.uid))
	h.idleBytes += stateOverhead + int64(len(u.uid))
	h.evictLocked()
}

func (h *memHistory) unidleLocked(u *uidLog) {
	if u.idlePrev != nil {
		u.idlePrev.idleNext = u.idleNext
	} else {
		h.idleOldest = u.idleNext
	}
	if u.idleNext != nil {
		u.idleNext.idlePrev = u.idlePrev
	} else {
		h.idleNewest = u.idlePrev
	}
	u.idlePrev, u.idleNext, u.inIdle = nil, nil, false
	h.bytes -= stateOverhead + int64(len(u.uid))
	h.idleBytes -= stateOverhead + int64(len(u.uid))
}

// sweep expires old entries and idle states; the hub's pinger calls it
// every tick.
func (h *memHistory) sweep() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evictLocked()
}

// since returns what a connection of uid that saw everything up to p has
// missed, and whether history has all of it. A connection that calls it
// is registered already, so anything newer reaches it live.
func (h *memHistory) since(uid string, p position) ([]qitem, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evictLocked()
	u := h.users[uid]
	ok := h.lim.Size > 0 && u != nil && u.epoch == p.epoch && p.n <= u.last
	var items []qitem
	if ok && p.n < u.last {
		// Everything after p.n must still be there: the first kept entry
		// is p.n+1 or older.
		if u.n == 0 || u.at(0).off > p.n+1 {
			ok = false
		} else {
			for i := range u.n {
				if e := u.at(i); e.off > p.n {
					items = append(items, qitem{m: e.m, off: e.off, epoch: u.epoch, replay: true})
				}
			}
		}
	}
	result := "recovered"
	if !ok {
		result, items = "failed", nil
	}
	h.recovered.WithLabelValues(result).Inc()
	return items, ok
}
