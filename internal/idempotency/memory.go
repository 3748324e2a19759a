package idempotency

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// entryOverhead approximates what an entry costs beyond its strings: the
// map slot, the entry and its list element.
const entryOverhead = 160

// Memory remembers keys on one node. Its memory is bounded: done keys
// take about their key, fingerprint and answer plus entryOverhead bytes,
// and past maxBytes the oldest done keys are forgotten before their TTL
// (Evicted counts them; a retry of an evicted key is sent again). Keys in
// flight are bounded by the requests under way and never evicted.
//
// Expired keys go lazily, as new ones finish: every key lives the same
// TTL, so the oldest finished is the first to expire.
type Memory struct {
	ttl      time.Duration
	maxBytes int
	now      func() time.Time

	mu      sync.Mutex
	keys    map[string]*entry
	done    list.List // of *entry, oldest finished first
	bytes   int
	evicted uint64
}

type entry struct {
	fp      string
	answer  string
	pending bool
	expires time.Time
	elem    *list.Element // in done; nil while pending
}

// NewMemory returns a store that remembers answers for ttl, within about
// maxBytes.
func NewMemory(ttl time.Duration, maxBytes int) *Memory {
	return &Memory{ttl: ttl, maxBytes: maxBytes, now: time.Now, keys: make(map[string]*entry)}
}

// Claim claims each of cs and reports what it found. It never fails.
func (m *Memory) Claim(_ context.Context, cs []Claim) ([]Outcome, error) {
	out := make([]Outcome, len(cs))
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for i, c := range cs {
		e := m.keys[c.Key]
		if e != nil && !e.pending && !now.Before(e.expires) {
			m.removeLocked(c.Key, e)
			e = nil
		}
		switch {
		case e == nil:
			m.keys[c.Key] = &entry{fp: c.Fingerprint, pending: true}
			out[i] = Outcome{State: Claimed}
		case e.fp != c.Fingerprint:
			out[i] = Outcome{State: Mismatch}
		case e.pending:
			out[i] = Outcome{State: InFlight}
		default:
			out[i] = Outcome{State: Replay, Answer: e.answer}
		}
	}
	return out, nil
}

// Finish remembers the answers of claims whose requests got a 200.
func (m *Memory) Finish(_ context.Context, ds []Done) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, d := range ds {
		e := m.keys[d.Key]
		if e == nil || !e.pending {
			continue
		}
		e.pending, e.answer, e.expires = false, d.Answer, now.Add(m.ttl)
		e.elem = m.done.PushBack(d.Key)
		m.bytes += size(d.Key, e)
	}
	m.trimLocked(now)
	return nil
}

// Release forgets claims whose requests did not get a 200.
func (m *Memory) Release(_ context.Context, cs []Claim) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		if e := m.keys[c.Key]; e != nil && e.pending {
			delete(m.keys, c.Key)
		}
	}
}

// Stats reports the keys held (done and in flight), their bytes, and the
// done keys forgotten early to keep within maxBytes.
func (m *Memory) Stats() (keys, bytes int, evicted uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys), m.bytes, m.evicted
}

// trimLocked drops the expired keys, and the oldest done ones while over
// maxBytes.
func (m *Memory) trimLocked(now time.Time) {
	for f := m.done.Front(); f != nil; f = m.done.Front() {
		key := f.Value.(string)
		e := m.keys[key]
		expired := !now.Before(e.expires)
		if !expired && m.bytes <= m.maxBytes {
			return
		}
		if !expired {
			m.evicted++
		}
		m.removeLocked(key, e)
	}
}

func (m *Memory) removeLocked(key string, e *entry) {
	delete(m.keys, key)
	if e.elem != nil {
		m.done.Remove(e.elem)
		m.bytes -= size(key, e)
	}
}

func size(key string, e *entry) int {
	return len(key) + len(e.fp) + len(e.answer) + entryOverhead
}
