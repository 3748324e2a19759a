package main

import (
	rtmetrics "runtime/metrics"
	"strconv"
)

// gcFloor holds the garbage collector's heap goal at a floor
// (-gc-heap-floor) while the server is busy. At GOGC=100 the collector
// runs each time the heap has grown by what was live after the last
// collection. A push server's live heap (its connections and history:
// about 25 MiB at 1,000 users with 100 messages each) is small next to
// what it turns into garbage (2-3 KB per /send behind net/http, a few
// hundred bytes on the fast lane), so under load it collects often, and
// each collection marks the whole history again. Each
// pinger tick of a busy spell the floor sets GOGC so that the next goal
// is at least the floor; a heap whose own goal is above it is left
// alone. The cost is memory while busy, up to the floor: on the first
// quiet tick the process gets its own GOGC back, and the trimmer
// returns the room (less of it where history written during the spell
// is spread over the larger heap). GOMEMLIMIT still wins: near the
// limit the runtime collects earlier.
type gcFloor struct {
	floor uint64
	base  int             // the process's GOGC (100 unless the environment says)
	set   func(int) int   // debug.SetGCPercent; tests record calls
	read  func() heapRoot // runtime/metrics; tests replace it
	cur   int             // the GOGC set last
}

// heapRoot is what the runtime's heap goal is computed from:
// goal = live + (live + stacks + globals) × GOGC/100.
type heapRoot struct {
	live, stacks, globals uint64
}

// maxTunedGOGC bounds the percent set. The percent follows the live
// heap once a tick, so a live heap that jumps between ticks (a connect
// storm) meets a goal of up to 11 times itself before the next tick; and
// a nearly empty heap (a node that has just started) gets a goal below
// the floor rather than a huge percent.
const maxTunedGOGC = 1000

// newGCFloor returns nil when there is nothing to do: no floor, or the
// collector turned off by GOGC=off. gogc is the GOGC environment
// variable, read as the runtime reads it (not from the runtime: other
// servers in the process, in tests, may have moved it).
func newGCFloor(floor uint64, gogc string, setPercent func(int) int) *gcFloor {
	base := 100
	if gogc == "off" {
		base = -1
	} else if n, err := strconv.Atoi(gogc); err == nil {
		base = n
	}
	if floor == 0 || base < 0 {
		return nil
	}
	samples := []rtmetrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/scan/globals:bytes"},
	}
	return &gcFloor{
		floor: floor,
		base:  base,
		set:   setPercent,
		cur:   base,
		read: func() heapRoot {
			rtmetrics.Read(samples)
			return heapRoot{samples[0].Value.Uint64(), samples[1].Value.Uint64(), samples[2].Value.Uint64()}
		},
	}
}

// percent is the GOGC that puts the next heap goal at the floor, never
// below base.
func (g *gcFloor) percent(h heapRoot) int {
	if h.live >= g.floor {
		return g.base
	}
	roots := h.live + h.stacks + h.globals
	if roots == 0 {
		return max(g.base, maxTunedGOGC)
	}
	want := (g.floor - h.live) * 100 / roots
	return max(g.base, int(min(want, maxTunedGOGC)))
}

// tick holds the heap goal at the floor while the server is busy (as
// the trimmer judges it: allocating more than it would idle), following
// the live heap, and gives the process its own GOGC back on the first
// tick that is not, so that a quiet node's heap is sized by what is
// live, not by the floor.
func (g *gcFloor) tick(busy bool) {
	p := g.base
	if busy {
		p = g.percent(g.read())
	}
	if p != g.cur {
		g.set(p)
		g.cur = p
	}
}

// release gives the process its own GOGC back: the server has stopped.
func (g *gcFloor) release() { g.tick(false) }
