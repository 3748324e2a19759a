package cluster

import (
	"context"
	"testing"

	"go-pusher/internal/testutil"
)

// TestResyncingForgetsDeadNodes: a registered node without a subscriber
// on its channel makes offline uids uncertain until nodeDeadAfter after
// its last beat; then it is forgotten.
func TestResyncingForgetsDeadNodes(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	t.Cleanup(func() { b.rdb.Del(ctx, b.nodesKey()) })
	if unsure, err := b.resyncing(ctx); err != nil || unsure {
		t.Fatalf("no node registered: resyncing %v, %v; want false", unsure, err)
	}
	now, err := b.rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	b.rdb.HSet(ctx, b.nodesKey(), "gone", now.Add(-2*nodeDeadAfter).UnixMilli())
	if unsure, err := b.resyncing(ctx); err != nil || unsure {
		t.Errorf("a node dead for %s: resyncing %v, %v; want false", 2*nodeDeadAfter, unsure, err)
	}
	if n := b.rdb.HLen(ctx, b.nodesKey()).Val(); n != 0 {
		t.Errorf("the dead node is still registered (%d nodes)", n)
	}
	b.rdb.HSet(ctx, b.nodesKey(), "silent", now.UnixMilli())
	if unsure, err := b.resyncing(ctx); err != nil || !unsure {
		t.Errorf("a node alive and not subscribed: resyncing %v, %v; want true", unsure, err)
	}
}
