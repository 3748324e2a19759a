package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go-pusher/internal/testutil"
)

// TestUnsureWhileANodeIsSilent: a registered node without a subscriber
// on its channel makes uids without a subscriber uncertain, for the
// lookup and for the publish alike, until nodeDeadAfter after its last
// beat; then it is forgotten and they are offline.
func TestUnsureWhileANodeIsSilent(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	ctx := context.Background()
	t.Cleanup(func() { b.one().rdb.Del(ctx, b.nodesKey()) })
	offline := func() error {
		online, off, err := b.Online(ctx, []string{"x"})
		if err == nil && (len(online) != 0 || fmt.Sprint(off) != "[x]") {
			return fmt.Errorf("online %v, offline %v", online, off)
		}
		return err
	}
	if err := offline(); err != nil {
		t.Fatalf("no node registered: %v, want x offline", err)
	}
	now, err := b.one().rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	b.one().rdb.HSet(ctx, b.nodesKey(), "gone", now.Add(-2*nodeDeadAfter).UnixMilli())
	if err := offline(); err != nil {
		t.Errorf("a node dead for %s: %v, want x offline", 2*nodeDeadAfter, err)
	}
	if n := b.one().rdb.HLen(ctx, b.nodesKey()).Val(); n != 0 {
		t.Errorf("the dead node is still registered (%d nodes)", n)
	}

	b.one().rdb.HSet(ctx, b.nodesKey(), "silent", now.UnixMilli())
	if err := offline(); !errors.Is(err, ErrResyncing) {
		t.Errorf("a node alive and not subscribed: lookup %v, want ErrResyncing", err)
	}
	p := &Publication{Message: message("m"), UIDs: []string{"x"}}
	if err := b.PublishAll(ctx, []*Publication{p}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.Unsure) != "[x]" || len(p.Gone) != 0 {
		t.Errorf("publish to x while a node is silent: unsure %v, gone %v; want x unsure", p.Unsure, p.Gone)
	}
}
