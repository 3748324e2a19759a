package memtune

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"go-pusher/internal/testutil"
)

// fakeHeap drives a trimmer with a clock and heap figures the test sets.
type fakeHeap struct {
	now   time.Time
	st    heapState
	trims int
}

func newFakeTrimmer(f *fakeHeap) *Trimmer {
	t := New(slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	t.trim = func() {
		f.trims++
		f.st.held = f.st.live // what a collection and a scavenge leave
	}
	t.read = func() heapState { return f.st }
	t.now = func() time.Time { return f.now }
	return t
}

// step moves the clock by d, the server allocating alloc bytes meanwhile,
// and ticks.
func (f *fakeHeap) step(t *Trimmer, d time.Duration, alloc uint64) {
	f.now = f.now.Add(d)
	f.st.allocs += alloc
	f.st.held += alloc
	t.look()
}

func TestTrimmerTrimsOnceTheServerIsQuiet(t *testing.T) {
	f := &fakeHeap{now: time.Unix(1e9, 0), st: heapState{live: 24 << 20, held: 24 << 20}}
	tr := newFakeTrimmer(f)
	for range 10 { // a connect storm: 10 MB a second
		f.step(tr, time.Second, 10<<20)
	}
	if f.trims != 0 {
		t.Fatalf("trimmed %d times while busy", f.trims)
	}
	f.step(tr, time.Second, 10<<10) // quiet: pings and a scrape
	f.step(tr, time.Second, 10<<10)
	if f.trims != 0 {
		t.Fatalf("trimmed after 2 s of quiet, want %s", tr.quietFor)
	}
	f.step(tr, time.Second, 10<<10)
	if f.trims != 1 {
		t.Fatalf("trims after 3 s of quiet = %d, want 1", f.trims)
	}
	for range 120 { // quiet for two minutes: one trim per busy spell
		f.step(tr, time.Second, 10<<10)
	}
	if f.trims != 1 {
		t.Fatalf("trims during one quiet spell = %d, want 1", f.trims)
	}
}

func TestTrimmerLeavesSmallOrBusyHeapsAlone(t *testing.T) {
	// A small heap: 4 MB live, 6 MB held.
	f := &fakeHeap{now: time.Unix(1e9, 0), st: heapState{live: 4 << 20, held: 4 << 20}}
	tr := newFakeTrimmer(f)
	f.step(tr, time.Second, 2<<20)
	for range 10 {
		f.step(tr, time.Second, 0)
	}
	if f.trims != 0 {
		t.Errorf("trimmed a %d MB heap %d times", f.st.held>>20, f.trims)
	}

	// A trickle (a message now and then, pings) is quiet; after the one
	// trim it stays untrimmed however long it lasts: see the first test.

	// A steady flow of messages: never quiet.
	f = &fakeHeap{now: time.Unix(1e9, 0), st: heapState{live: 24 << 20, held: 100 << 20}}
	tr = newFakeTrimmer(f)
	for range 60 {
		f.step(tr, time.Second, 2<<20)
	}
	if f.trims != 0 {
		t.Errorf("trimmed %d times while messages flowed", f.trims)
	}

	// A big node: its pings allocate 5 MB a second, under 1% of its live
	// heap per tick, which still counts as quiet.
	f = &fakeHeap{now: time.Unix(1e9, 0), st: heapState{live: 2 << 30, held: 3 << 30}}
	tr = newFakeTrimmer(f)
	for range 5 {
		f.step(tr, time.Second, 5<<20)
	}
	if f.trims != 1 {
		t.Errorf("big quiet node: trims = %d, want 1", f.trims)
	}

	// After a trim, another burst and quiet spell within a minute waits.
	for range 10 {
		f.step(tr, time.Second, 200<<20)
	}
	for range 10 {
		f.step(tr, time.Second, 0)
	}
	if f.trims != 1 {
		t.Errorf("trims within a minute of the last = %d, want 1", f.trims)
	}
	for range 60 {
		f.step(tr, time.Second, 0)
	}
	if f.trims != 2 {
		t.Errorf("trims a minute later = %d, want 2", f.trims)
	}
}

// With the real runtime: garbage left by a burst comes back, and the
// counters and the log say how much.
func TestTrimmerReturnsRealGarbage(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logged bytes.Buffer
	tr := New(slog.New(slog.NewTextHandler(&logged, nil)), reg)
	now := time.Now()
	tr.now = func() time.Time { return now }
	tr.look()
	junk := make([][]byte, 0, 1024)
	for range 1024 {
		junk = append(junk, make([]byte, 64<<10)) //nolint:staticcheck // SA4010: the allocations are the point (64 MiB in all), read by tr.look
	}
	junk = nil
	now = now.Add(time.Second)
	tr.look() // busy: the allocations above
	now = now.Add(5 * time.Second)
	tr.look()
	_ = junk
	if n := testutil.Counter(t, tr.trims); n != 1 {
		t.Fatalf("pusher_memory_trims_total = %v, want 1", n)
	}
	if freed := testutil.Counter(t, tr.trimmed); freed < 32<<20 {
		t.Fatalf("freed %v bytes after dropping 64 MiB, want most of it", freed)
	}
	if !strings.Contains(logged.String(), `msg="returned free memory to the system" bytes=`) {
		t.Errorf("no log line for the trim: %q", logged.String())
	}
}

// look tells busy from quiet: busy while the server allocates more than
// 1% of the live heap a tick, quiet from the first tick that it does not.
func TestTrimmerTellsBusyFromQuiet(t *testing.T) {
	f := &fakeHeap{now: time.Unix(1e9, 0), st: heapState{live: 200 << 20, held: 200 << 20}}
	tr := newFakeTrimmer(f)
	for i, s := range []struct {
		alloc uint64
		busy  bool
	}{
		{0, true},        // the first tick has nothing to compare with
		{4 << 20, true},  // above 1% of the live heap
		{1 << 20, false}, // below it
		{0, false},
		{3 << 20, true},
	} {
		f.now = f.now.Add(time.Second)
		f.st.allocs += s.alloc
		if got := tr.look(); got != s.busy {
			t.Errorf("tick %d after %d bytes = %v; want %v", i, s.alloc, got, s.busy)
		}
	}
}

// Start and Close own the goroutine: Close returns once it has ended,
// and may be called twice.
func TestTrimmerStartClose(_ *testing.T) {
	tr := New(slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	tr.tick = time.Millisecond
	tr.Start()
	tr.Close()
	tr.Close()
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
