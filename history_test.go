package main

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The per-uid ring wraps around many times, grows up to Size and no
// further, and since still returns exactly the offsets after the one
// asked for, oldest first, or recovered:false once they are gone.
func TestHistoryRingWrapsAround(t *testing.T) {
	now := time.Now()
	const size = 7
	h := newMemHistory(historyLimits{Size: size, TTL: time.Hour, MaxBytes: 1 << 30}, func() time.Time { return now }, prometheus.NewRegistry())
	m := newMessage("06a1r3k6c7l2q0e9f1s8", []byte("m"), now)
	for last := uint64(1); last <= 40; last++ {
		h.mu.Lock()
		it, err := h.appendLocked("u", m)
		u := h.users["u"]
		n, ring := u.n, len(u.ring)
		h.mu.Unlock()
		if err != nil || it.off != last {
			t.Fatalf("append %d: offset %d, %v", last, it.off, err)
		}
		if want := min(int(last), size); n != want || ring > size {
			t.Fatalf("after %d appends: %d kept in a ring of %d, want %d in at most %d", last, n, ring, want, size)
		}
		oldest := last - uint64(n) + 1
		for from := uint64(0); from <= last; from++ {
			items, ok := h.since("u", position{it.epoch, from})
			if want := from+1 >= oldest; ok != want {
				t.Fatalf("after %d appends, since %d: ok %v, want %v", last, from, ok, want)
			}
			if !ok {
				continue
			}
			if got := uint64(len(items)); got != last-from {
				t.Fatalf("after %d appends, since %d: %d items, want %d", last, from, got, last-from)
			}
			for i, it := range items {
				if it.off != from+1+uint64(i) {
					t.Fatalf("after %d appends, since %d: item %d has offset %d", last, from, i, it.off)
				}
			}
		}
	}
	// Dropping everything lets the ring go; reuse comes from the free list.
	h.mu.Lock()
	defer h.mu.Unlock()
	for u := h.users["u"]; u.n > 0; {
		h.removeLocked(u.at(0), "age")
	}
	if u := h.users["u"]; u.ring != nil || h.count != 0 || h.nfree == 0 {
		t.Fatalf("after dropping all: ring %v, count %d, free %d", u.ring, h.count, h.nfree)
	}
}
