package main

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// fakeGC records the GOGC values a gcFloor sets and serves it the heap
// the test describes.
type fakeGC struct {
	heap heapRoot
	set  []int
}

func newFakeFloor(t *testing.T, floor uint64, gogc string) (*gcFloor, *fakeGC) {
	t.Helper()
	f := &fakeGC{}
	g := newGCFloor(floor, gogc, func(p int) int { f.set = append(f.set, p); return 0 })
	if g == nil {
		t.Fatalf("newGCFloor(%d, %q) = nil", floor, gogc)
	}
	g.read = func() heapRoot { return f.heap }
	return g, f
}

// goal is the runtime's heap goal for h at GOGC p.
func goal(h heapRoot, p int) uint64 {
	return h.live + (h.live+h.stacks+h.globals)*uint64(p)/100
}

func TestGCFloorHoldsTheGoalAtTheFloorWhileBusy(t *testing.T) {
	const floor = 128 << 20
	g, f := newFakeFloor(t, floor, "")
	f.heap = heapRoot{live: 16 << 20, stacks: 2 << 20, globals: 64 << 10}
	g.tick(true)
	if len(f.set) != 1 {
		t.Fatalf("busy tick set GOGC %v times, want once", f.set)
	}
	if got := goal(f.heap, f.set[0]); got < floor*99/100 || got > floor {
		t.Errorf("GOGC %d puts the goal at %d MiB; want the floor, %d MiB", f.set[0], got>>20, floor>>20)
	}

	g.tick(false)
	if last := f.set[len(f.set)-1]; len(f.set) != 2 || last != 100 {
		t.Errorf("quiet tick: GOGC set %v; want 100 (the process's own) last", f.set)
	}
	g.tick(false)
	if len(f.set) != 2 {
		t.Errorf("second quiet tick set GOGC again: %v", f.set)
	}
}

func TestGCFloorLeavesALargeHeapAlone(t *testing.T) {
	g, f := newFakeFloor(t, 128<<20, "")
	f.heap = heapRoot{live: 100 << 20, stacks: 20 << 20}
	g.tick(true) // 100 + 120 MiB > the floor at GOGC=100 already
	f.heap.live = 200 << 20
	g.tick(true)
	if len(f.set) != 0 {
		t.Errorf("GOGC set to %v for heaps whose goal is above the floor; want untouched", f.set)
	}
}

func TestGCFloorFollowsTheLiveHeap(t *testing.T) {
	g, f := newFakeFloor(t, 128<<20, "")
	for _, live := range []uint64{16 << 20, 24 << 20, 40 << 20, 20 << 20} {
		f.heap = heapRoot{live: live, stacks: 2 << 20}
		g.tick(true)
		last := f.set[len(f.set)-1]
		if got := goal(f.heap, last); got < 127<<20 || got > 128<<20 {
			t.Errorf("live %d MiB: GOGC %d puts the goal at %d MiB; want 128", live>>20, last, got>>20)
		}
	}
	n := len(f.set)
	g.tick(true) // nothing moved
	g.release()  // the server stopped
	if len(f.set) != n+1 || f.set[n] != 100 {
		t.Errorf("GOGC set %v; want nothing for an unchanged heap, then 100 on release", f.set[n:])
	}
}

func TestGCFloorKeepsTheProcesssGOGC(t *testing.T) {
	g, f := newFakeFloor(t, 128<<20, "300")
	f.heap = heapRoot{live: 60 << 20} // 60 + 180 MiB at GOGC=300
	g.tick(true)
	f.heap.live = 1 << 20
	g.tick(true)
	if len(f.set) != 1 || f.set[0] != maxTunedGOGC {
		t.Errorf("GOGC set %v; want nothing for a goal above the floor, then %d (the cap) for a 1 MiB heap", f.set, maxTunedGOGC)
	}
	g.tick(false)
	if f.set[len(f.set)-1] != 300 {
		t.Errorf("quiet: GOGC set %v; want the environment's 300 back", f.set)
	}

	for _, tc := range []struct {
		floor uint64
		gogc  string
	}{{0, ""}, {128 << 20, "off"}, {128 << 20, "-1"}} {
		if g := newGCFloor(tc.floor, tc.gogc, debug.SetGCPercent); g != nil {
			t.Errorf("newGCFloor(%d, GOGC=%q) = %+v; want nil (nothing to hold)", tc.floor, tc.gogc, g)
		}
	}
}

// The runtime's own figures: the metric names are right and the percent
// set reaches the collector.
func TestGCFloorSetsTheRuntimesGOGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	g := newGCFloor(1<<40, "", debug.SetGCPercent)
	runtime.GC() // live is what the last collection found
	h := g.read()
	if h.live == 0 || h.globals == 0 {
		t.Fatalf("read %+v from runtime/metrics; want a live heap and globals", h)
	}
	g.tick(true)
	if p := debug.SetGCPercent(100); p != g.percent(h) || p <= 100 {
		t.Errorf("runtime GOGC after a busy tick = %d; want %d", p, g.percent(h))
	}
}
