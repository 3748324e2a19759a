// Package memtune owns giving memory back to the system once the server
// has gone quiet after a burst. The Go runtime keeps the heap room of the
// last busy spell (up to twice the live heap at GOGC=100) for good; after
// a reconnect storm onto a node of idle connections that room is about a
// third of its memory, held for nothing (at 10,000 idle connections, 2 of
// 8 KiB each). It changes no process-wide setting: GOGC and GOMEMLIMIT
// stay the operator's (docs/operations.md).
package memtune

import (
	"log/slog"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Trimmer runs a collection and returns the free memory
// (debug.FreeOSMemory) once a busy spell is over, that is once the server
// has allocated next to nothing for quietFor: once per busy spell, at
// most once per minInterval, and only for a heap of minTrimHeap or more.
// While messages flow it does nothing. How much is garbage cannot be
// known without collecting: objects that died after the last collection
// (a mass disconnect) still count as live until the next one.
//
// Its goroutine, started by Start, looks once per tick; Close stops it.
type Trimmer struct {
	tick        time.Duration
	quietFor    time.Duration
	minInterval time.Duration
	read        func() heapState // runtime/metrics; tests replace it
	trim        func()           // debug.FreeOSMemory; tests count calls
	now         func() time.Time
	log         *slog.Logger

	trims, trimmed prometheus.Counter

	lastAllocs  uint64    // cumulative allocations at the last tick
	lastBusy    time.Time // the last tick that saw allocation move
	lastTrimmed time.Time
	done        bool // trimmed since lastBusy

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// heapState is what Trimmer reads of the runtime.
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

// New returns a Trimmer that looks once a second and registers its
// counters on reg.
func New(log *slog.Logger, reg prometheus.Registerer) *Trimmer {
	samples := []rtmetrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	t := &Trimmer{
		tick:        time.Second,
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
		trim: debug.FreeOSMemory,
		now:  time.Now,
		log:  log,
		trims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_memory_trims_total",
			Help: "Times the server returned free heap to the system after a busy spell ended.",
		}),
		trimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_memory_trimmed_bytes_total",
			Help: "Heap bytes those trims returned.",
		}),
		stop: make(chan struct{}),
	}
	reg.MustRegister(t.trims, t.trimmed)
	return t
}

// Start runs the Trimmer's goroutine until Close.
func (t *Trimmer) Start() {
	t.wg.Go(func() {
		tk := time.NewTicker(t.tick)
		defer tk.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tk.C:
				t.look()
			}
		}
	})
}

// Close stops the goroutine and waits for it (a trim under way ends
// first).
func (t *Trimmer) Close() {
	t.once.Do(func() { close(t.stop) })
	t.wg.Wait()
}

// look trims once the server has been quiet for quietFor after a busy
// spell. It reports whether the server allocated since the last look as
// a busy one does.
func (t *Trimmer) look() (busy bool) {
	st := t.read()
	now := t.now()
	busy = t.lastBusy.IsZero() || st.allocs-t.lastAllocs > max(minQuietAllocs, st.live/100)
	t.lastAllocs = st.allocs
	if busy {
		t.lastBusy, t.done = now, false
		return true
	}
	if t.done || now.Sub(t.lastBusy) < t.quietFor || now.Sub(t.lastTrimmed) < t.minInterval || st.held < minTrimHeap {
		return false
	}
	t.trim()
	t.lastTrimmed, t.done = now, true
	after := t.read()
	t.lastAllocs = after.allocs // the trim's own allocations are not activity
	var freed uint64
	if st.held > after.held {
		freed = st.held - after.held
	}
	t.trims.Inc()
	t.trimmed.Add(float64(freed))
	t.log.Info("returned free memory to the system", "bytes", freed)
	return false
}
