package cluster

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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
	for i := range 2 {
		if got, err := b.Arrive(ctx, "u", "tok-1"); err != nil || got != 1 {
			t.Fatalf("arrive %d with the same token = %v, %v; want event 1", i, got, err)
		}
	}
	if got, err := b.Arrive(ctx, "u", "tok-2"); err != nil || got != 0 {
		t.Fatalf("another arrive of an online uid = %v, %v; want 0 (nothing to send)", got, err)
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

// TestPresenceEventNumbers: a uid's events are numbered 1, 2, 3... across
// its online, offline and next online, and the delivered mark only moves
// forward.
func TestPresenceEventNumbers(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	rdb := b.one().rdb
	t.Cleanup(func() { rdb.Del(ctx, b.presenceKey("v"), b.pendingKey(), b.nodeUIDsKey(b.nodeID)) })
	if seq, err := b.Arrive(ctx, "v", "t1"); err != nil || seq != 1 {
		t.Fatalf("first online = %d, %v; want 1", seq, err)
	}
	if err := b.Leave(ctx, "v", time.Now().Add(-time.Second), 0); err != nil {
		t.Fatal(err)
	}
	var got []PresenceEvent
	if _, err := b.expireDue(ctx, func(ev PresenceEvent) { got = append(got, ev) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].UID != "v" || got[0].Seq != 2 {
		t.Fatalf("expired %+v, want v's offline as event 2", got)
	}
	if ttl := rdb.PTTL(ctx, b.presenceKey("v")).Val(); ttl <= 0 || ttl > presenceKeep {
		t.Errorf("after the offline the hash expires in %v, want within %v", ttl, presenceKeep)
	}
	if seq, err := b.Arrive(ctx, "v", "t2"); err != nil || seq != 3 {
		t.Fatalf("the next online = %d, %v; want 3", seq, err)
	}
	if ttl := rdb.PTTL(ctx, b.presenceKey("v")).Val(); ttl != -1 {
		t.Errorf("online again, the hash expires in %v; want no expiry", ttl)
	}
	d, err := b.Delivered(ctx, []string{"v", "nobody"})
	if err != nil || d["v"] != 0 || d["nobody"] != 0 {
		t.Fatalf("delivered before any = %v, %v; want 0s", d, err)
	}
	if err := b.MarkDelivered(ctx, []string{"v", "v", "nobody"}, []int64{2, 1, 5}); err != nil {
		t.Fatal(err)
	}
	d, err = b.Delivered(ctx, []string{"v", "nobody"})
	if err != nil || d["v"] != 2 || d["nobody"] != 0 {
		t.Errorf("delivered = %v, %v; want v at 2 (never back to 1), nobody with no key made", d, err)
	}
	if n := rdb.Exists(ctx, b.presenceKey("nobody")).Val(); n != 0 {
		t.Error("marking a uid without presence made its hash")
	}
}

// TestPendingEntryMovedToItsDue: an entry of pending whose uid's offline
// was moved later by another leave, whose own queueing was lost, goes to
// where it is now due instead of coming back at every beat.
func TestPendingEntryMovedToItsDue(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	rdb := b.one().rdb
	t.Cleanup(func() { rdb.Del(ctx, b.presenceKey("w"), b.pendingKey(), b.nodeUIDsKey(b.nodeID)) })
	if _, err := b.Arrive(ctx, "w", "t1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Leave(ctx, "w", time.Now(), time.Hour); err != nil { // due in an hour
		t.Fatal(err)
	}
	past := float64(time.Now().Add(-time.Minute).UnixMilli())
	rdb.ZAdd(ctx, b.pendingKey(), redis.Z{Score: past, Member: "w"}) // as if an older entry had stayed
	n, err := b.expireDue(ctx, func(ev PresenceEvent) { t.Errorf("sent %+v before its due", ev) })
	if err != nil || n != 1 {
		t.Fatalf("expireDue = %d, %v; want the stale entry read", n, err)
	}
	score, err := rdb.ZScore(ctx, b.pendingKey(), "w").Result()
	if err != nil || score <= past || score < float64(time.Now().Add(50*time.Minute).UnixMilli()) {
		t.Errorf("the entry is at %v (%v), want moved to its due, an hour on", score, err)
	}
}

// TestRejoinWaitsForTheSweep: a node that finds itself forgotten records
// its users again only once the sweep of its old set is over, so that the
// sweep does not take them away again.
func TestRejoinWaitsForTheSweep(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	rdb := b.one().rdb
	t.Cleanup(func() { rdb.Del(ctx, b.nodesKey(), b.nodeUIDsKey(b.nodeID)) })
	var rejoined atomic.Int32
	b.OnRejoin(func() { rejoined.Add(1) })
	b.beat(ctx) // registered
	rdb.HDel(ctx, b.nodesKey(), b.nodeID)
	rdb.SAdd(ctx, b.nodeUIDsKey(b.nodeID), "x") // a sweep under way
	b.beat(ctx)
	b.beat(ctx)
	if n := rejoined.Load(); n != 0 {
		t.Fatalf("rejoined %d times while its set was being swept", n)
	}
	rdb.SRem(ctx, b.nodeUIDsKey(b.nodeID), "x") // the sweep is over
	b.beat(ctx)
	b.beat(ctx)
	if n := rejoined.Load(); n != 1 {
		t.Errorf("rejoined %d times after the sweep, want once", n)
	}
}
