package cluster

import (
	"context"
	"testing"
	"time"

	"go-pusher/internal/testutil"
)

// TestPresenceRetriesAnswerAgain: a transition retried because its first
// answer was lost answers as the first did: an arrive with the same
// token is still "send online", a leave still gives the due to queue.
func TestPresenceRetriesAnswerAgain(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	rdb := b.one().rdb
	t.Cleanup(func() { rdb.Del(ctx, b.presenceKey("u"), b.pendingKey(), b.nodeUIDsKey(b.nodeID)) })
	for i, want := range []bool{true, true} {
		if got, err := b.Arrive(ctx, "u", "tok-1"); err != nil || got != want {
			t.Fatalf("arrive %d with the same token = %v, %v; want %v", i, got, err, want)
		}
	}
	if got, err := b.Arrive(ctx, "u", "tok-2"); err != nil || got {
		t.Fatalf("another arrive of an online uid = %v, %v; want false", got, err)
	}
	left := time.Now()
	for i := range 2 {
		if err := b.Leave(ctx, "u", left, time.Hour); err != nil {
			t.Fatal(err)
		}
		rdb.ZRem(ctx, b.pendingKey(), "u") // as if the queueing's answer was lost
		if i == 0 {
			continue
		}
		if err := b.Leave(ctx, "u", left, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := rdb.ZCard(ctx, b.pendingKey()).Result(); err != nil || n != 1 {
		t.Errorf("after leaves retried, %d pending (%v), want the uid queued once", n, err)
	}
}

// TestNoPruneAfterOwnSilence: a node that could not beat for longer than
// nodeDeadAfter itself (a Redis outage) forgets nobody at its next beat:
// the others could not beat either.
func TestNoPruneAfterOwnSilence(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	rdb := b.one().rdb
	t.Cleanup(func() { rdb.Del(ctx, b.nodesKey()) })
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	old := now.Add(-2 * nodeDeadAfter).UnixMilli()
	rdb.HSet(ctx, b.nodesKey(), b.nodeID, old, "other", old)
	b.beat(ctx)
	b.mu.Lock()
	swept := len(b.toSweep)
	b.mu.Unlock()
	if n := rdb.HLen(ctx, b.nodesKey()).Val(); n != 2 || swept != 0 {
		t.Errorf("after its own silence: %d nodes registered, %d to sweep; want both kept, none", n, swept)
	}
	b.beat(ctx) // beating again: the other is dead indeed
	b.mu.Lock()
	_, sweeping := b.toSweep["other"]
	b.mu.Unlock()
	if n := rdb.HLen(ctx, b.nodesKey()).Val(); n != 1 || !sweeping {
		t.Errorf("the next beat: %d nodes registered, other to sweep %v; want it forgotten and swept", n, sweeping)
	}
}
