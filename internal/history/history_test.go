package history

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeConns is the hub as history sees it: the uids in open are online,
// and what is delivered is kept.
type fakeConns struct {
	mu        sync.Mutex
	open      map[string]bool
	delivered map[string][]stream.Item
}

func newFakeConns(online ...string) *fakeConns {
	f := &fakeConns{open: map[string]bool{}, delivered: map[string][]stream.Item{}}
	for _, uid := range online {
		f.open[uid] = true
	}
	return f
}

func (f *fakeConns) Open(uid string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open[uid]
}

func (f *fakeConns) Deliver(uid string, it stream.Item) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delivered[uid] = append(f.delivered[uid], it)
}

// newTestMemory is a history at a clock the test moves (*now).
func newTestMemory(lim Limits, conns Conns, now *time.Time) *Memory {
	h := New(lim, conns, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	h.now = func() time.Time { return *now }
	return h
}

func msg(now time.Time, size int) *stream.Message {
	return stream.NewMessage("06a1r3k6c7l2q0e9f1s8", make([]byte, size), now)
}

// The per-uid ring wraps around many times, grows up to Size and no
// further, and Since still returns exactly the offsets after the one
// asked for, oldest first, or recovered:false once they are gone.
func TestRingWrapsAround(t *testing.T) {
	now := time.Now()
	const size = 7
	h := newTestMemory(Limits{Size: size, TTL: time.Hour, MaxBytes: 1 << 30}, newFakeConns("u"), &now)
	for last := uint64(1); last <= 40; last++ {
		h.Publish(msg(now, 1), []string{"u"})
		h.mu.Lock()
		u := h.users["u"]
		n, ring, epoch := u.n, len(u.ring), u.epoch
		h.mu.Unlock()
		if want := min(int(last), size); n != want || ring > size {
			t.Fatalf("after %d appends: %d kept in a ring of %d, want %d in at most %d", last, n, ring, want, size)
		}
		oldest := last - uint64(n) + 1
		for from := uint64(0); from <= last; from++ {
			items, ok := h.Since("u", stream.Position{Epoch: epoch, N: from})
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
				if it.Off != from+1+uint64(i) || !it.Replay {
					t.Fatalf("after %d appends, since %d: item %d has offset %d (replay %v)", last, from, i, it.Off, it.Replay)
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

// TestPublishGivesOffsetsAndDelivers: each online uid gets the next
// offset of its own stream and the item; an offline uid is returned as
// gone, gets nothing stored and no state.
func TestPublishGivesOffsetsAndDelivers(t *testing.T) {
	now := time.Now()
	conns := newFakeConns("a", "b")
	h := newTestMemory(Limits{Size: 10, TTL: time.Hour, MaxBytes: 1 << 20}, conns, &now)
	h.Publish(msg(now, 1), []string{"a"})
	gone := h.Publish(msg(now, 1), []string{"a", "nobody", "b"})
	if fmt.Sprint(gone) != "[nobody]" {
		t.Errorf("gone = %v, want [nobody]", gone)
	}
	for uid, want := range map[string]string{"a": "[1 2]", "b": "[1]"} {
		var offs []uint64
		for _, it := range conns.delivered[uid] {
			offs = append(offs, it.Off)
		}
		if fmt.Sprint(offs) != want {
			t.Errorf("%s got offsets %v, want %s", uid, offs, want)
		}
	}
	if _, ok := h.users["nobody"]; ok {
		t.Error("an offline uid got a state")
	}
	if n, _ := h.Size(); n != 3 {
		t.Errorf("%d messages held, want 3", n)
	}
}

// TestSinceCases: at the current offset, too old, another epoch, ahead of
// the current offset, an unknown uid, and history off.
func TestSinceCases(t *testing.T) {
	now := time.Now()
	h := newTestMemory(Limits{Size: 3, TTL: time.Hour, MaxBytes: 1 << 20}, newFakeConns("u"), &now)
	for range 10 {
		h.Publish(msg(now, 1), []string{"u"})
	}
	epoch := h.users["u"].epoch
	for _, tt := range []struct {
		name  string
		uid   string
		p     stream.Position
		ok    bool
		items int
	}{
		{"current", "u", stream.Position{Epoch: epoch, N: 10}, true, 0},
		{"oldest kept", "u", stream.Position{Epoch: epoch, N: 7}, true, 3},
		{"too old", "u", stream.Position{Epoch: epoch, N: 6}, false, 0},
		{"other epoch", "u", stream.Position{Epoch: "abc", N: 10}, false, 0},
		{"ahead", "u", stream.Position{Epoch: epoch, N: 11}, false, 0},
		{"unknown uid", "v", stream.Position{Epoch: epoch, N: 0}, false, 0},
	} {
		if items, ok := h.Since(tt.uid, tt.p); ok != tt.ok || len(items) != tt.items {
			t.Errorf("%s: Since(%s) = %d items, %v; want %d, %v", tt.name, tt.p, len(items), ok, tt.items, tt.ok)
		}
	}
	off := newTestMemory(Limits{Size: 0, TTL: time.Hour, MaxBytes: 1 << 20}, newFakeConns("u"), &now)
	off.Publish(msg(now, 1), []string{"u"})
	if _, ok := off.Since("u", stream.Position{Epoch: off.users["u"].epoch, N: 1}); ok {
		t.Error("Since with history off = ok, want recovered false")
	}
}

// TestBounds: the per-uid count, the byte budget and the age each hold
// under a flood, oldest first.
func TestBounds(t *testing.T) {
	now := time.Now()
	uids := []string{"u0", "u1", "u2", "u3", "u4"}
	h := newTestMemory(Limits{Size: 50, TTL: time.Minute, MaxBytes: 20000}, newFakeConns(uids...), &now)
	for range 100 {
		h.Publish(msg(now, 200), uids)
		h.mu.Lock()
		for uid, u := range h.users {
			if u.n > 50 || len(u.ring) > 50 {
				t.Errorf("%s holds %d entries in a ring of %d, want at most 50", uid, u.n, len(u.ring))
			}
		}
		h.mu.Unlock()
		if _, b := h.Size(); b > 20000 {
			t.Fatalf("history holds %d bytes, budget 20000", b)
		}
	}
	if testutil.Counter(t, h.byBytes) == 0 {
		t.Error("nothing evicted for the byte budget")
	}
	small := newTestMemory(Limits{Size: 5, TTL: time.Minute, MaxBytes: 1 << 20}, newFakeConns("u"), &now)
	for range 8 {
		small.Publish(msg(now, 1), []string{"u"})
	}
	if got := testutil.Counter(t, small.byCount); got != 3 {
		t.Errorf("evicted by count = %v, want 3", got)
	}
	now = now.Add(2 * time.Minute)
	h.sweep()
	if n, _ := h.Size(); n != 0 || testutil.Counter(t, h.byAge) == 0 {
		t.Errorf("after the TTL: %d messages held, %v evicted by age; want 0 and some", n, testutil.Counter(t, h.byAge))
	}
	// The uids keep their epoch and offset, without messages, while idle.
	for _, uid := range uids {
		h.UserOffline(uid)
	}
	if n := len(h.users); n != 5 {
		t.Errorf("%d uid states after their messages expired, want 5 (kept while idle)", n)
	}
}

// TestIdleStatesBounded: idle uids' states count against MaxBytes, and the
// longest idle go first when it is exceeded.
func TestIdleStatesBounded(t *testing.T) {
	now := time.Now()
	conns := newFakeConns()
	h := newTestMemory(Limits{Size: 100, TTL: 50 * time.Millisecond, MaxBytes: 2000}, conns, &now)
	for i := range 30 {
		uid := fmt.Sprintf("idle-%02d", i)
		conns.open[uid] = true
		h.UserOnline(uid)
		h.Publish(msg(now, 1), []string{uid})
		delete(conns.open, uid)
		now = now.Add(time.Millisecond)
		h.UserOffline(uid)
	}
	now = now.Add(time.Second)
	h.sweep()
	if n, b := h.Size(); n != 0 || b > 2000 {
		t.Fatalf("%d messages, %d bytes held, want 0 and at most 2000", n, b)
	}
	if n := len(h.users); n == 0 || n >= 30 {
		t.Fatalf("%d idle states kept, want some but not all 30", n)
	}
	if _, ok := h.users["idle-29"]; !ok {
		t.Error("the most recently idle uid was dropped before older ones")
	}
	if _, ok := h.users["idle-00"]; ok {
		t.Error("the longest idle uid was kept")
	}
	now = now.Add(IdleStateTTL)
	h.sweep()
	if n := len(h.users); n != 0 {
		t.Errorf("%d idle states kept after IdleStateTTL, want 0", n)
	}
}

// Idle uid states count against MaxBytes, but eviction drops messages
// first: once idle states fill the budget, a connected uid's fresh
// message must not be evicted at once.
func TestIdleStatesDoNotCrowdOutMessages(t *testing.T) {
	now := time.Now()
	conns := newFakeConns("alice")
	h := newTestMemory(Limits{Size: 100, TTL: 5 * time.Minute, MaxBytes: 20000}, conns, &now)
	m := msg(now, 5)
	h.mu.Lock()
	for i := range 150 { // users that came and went today
		uid := fmt.Sprintf("gone%03d", i)
		if _, err := h.appendLocked(uid, m); err != nil {
			h.mu.Unlock()
			t.Fatal(err)
		}
		for h.users[uid].n > 0 {
			h.removeLocked(h.users[uid].at(0), "age") // their messages expired
		}
	}
	h.mu.Unlock()
	for i := range 150 {
		h.UserOffline(fmt.Sprintf("gone%03d", i))
	}
	h.Publish(m, []string{"alice"})
	if n := h.users["alice"].n; n == 0 {
		t.Errorf("alice's message was evicted at once while %d-byte idle states stay", stateOverhead)
	}
}

// The sweeper expires messages without a Publish to trigger it, and
// Close stops it.
func TestSweeperExpiresAndStops(t *testing.T) {
	h := New(Limits{Size: 10, TTL: 20 * time.Millisecond, MaxBytes: 1 << 20}, newFakeConns("u"), slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	h.Start()
	defer h.Close()
	h.Publish(msg(time.Now(), 1), []string{"u"})
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := h.Size(); n != 0; n, _ = h.Size() {
		if time.Now().After(deadline) {
			t.Fatal("the sweeper did not expire the message")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
