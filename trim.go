package main

import (
	rtmetrics "runtime/metrics"
	"time"
)

// trimmer gives memory back to the system once the server has gone quiet
// after a burst. The Go runtime keeps the heap room of the last busy spell
// (up to twice the live heap at GOGC=100) for good; after a reconnect
// storm onto a node of idle connections that room is about a third of its
// memory, held for nothing (at 10,000 idle connections, 2 of 8 KiB each).
// Once a busy spell is over (the server has allocated next to nothing for
// quietFor) trimmer runs a collection and returns the free memory
// (debug.FreeOSMemory): once per busy spell, at most once per minInterval,
// and only for a heap of minTrimHeap or more. The hub's pinger calls tick
// every tick; while messages flow it does nothing. How much is garbage
// cannot be known without collecting: objects that died after the last
// collection (a mass disconnect) still count as live until the next one.
type trimmer struct {
	quietFor    time.Duration
	minInterval time.Duration
	read        func() heapState // runtime/metrics; tests replace it
	trim        func()           // debug.FreeOSMemory; tests count calls
	now         func() time.Time
	onTrim      func(freed uint64)

	lastAllocs  uint64    // cumulative allocations at the last tick
	lastBusy    time.Time // the last tick that saw allocation move
	lastTrimmed time.Time
	trimmed     bool // since lastBusy
}

// heapState is what trimmer reads of the runtime.
type heapState struct {
	allocs uint64 // bytes allocated since the start
	held   uint64 // heap bytes held: objects (live or not yet collected) and free room
	live   uint64 // live heap at the last collection: the scale of "quiet"
}

// Quiet is relative to the live heap: a node of a million idle
// connections allocates megabytes a second for pings alone.
const (
	minQuietAllocs = 1 << 20 // per tick: below this is always quiet
	minTrimHeap    = 8 << 20 // a smaller heap is not worth a collection
)

func newTrimmer(trim func(), onTrim func(freed uint64)) *trimmer {
	samples := []rtmetrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	return &trimmer{
		quietFor:    3 * time.Second,
		minInterval: time.Minute,
		read: func() heapState {
			rtmetrics.Read(samples)
			return heapState{
				allocs: samples[0].Value.Uint64(),
				held:   samples[1].Value.Uint64() + samples[2].Value.Uint64() + samples[3].Value.Uint64(),
				live:   samples[4].Value.Uint64(),
			}
		},
		trim:   trim,
		now:    time.Now,
		onTrim: onTrim,
	}
}

// tick trims once the server has been quiet for quietFor after a busy
// spell. It reports whether the server allocated since the last tick as
// a busy one does.
func (t *trimmer) tick() (busy bool) {
	st := t.read()
	now := t.now()
	busy = t.lastBusy.IsZero() || st.allocs-t.lastAllocs > max(minQuietAllocs, st.live/100)
	t.lastAllocs = st.allocs
	if busy {
		t.lastBusy, t.trimmed = now, false
		return true
	}
	if t.trimmed || now.Sub(t.lastBusy) < t.quietFor || now.Sub(t.lastTrimmed) < t.minInterval || st.held < minTrimHeap {
		return false
	}
	t.trim()
	t.lastTrimmed, t.trimmed = now, true
	after := t.read()
	t.lastAllocs = after.allocs // the trim's own allocations are not activity
	if t.onTrim != nil {
		var freed uint64
		if st.held > after.held {
			freed = st.held - after.held
		}
		t.onTrim(freed)
	}
	return false
}
