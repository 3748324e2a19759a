package cluster

import (
	"context"
	"testing"
	"time"

	"go-pusher/internal/idempotency"
	"go-pusher/internal/testutil"
)

// TestPublishNeedsItsClaim: a publish whose claim is no longer the key's
// value (it lapsed and another request took the key) sends nothing.
func TestPublishNeedsItsClaim(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	sub := subscribeAside(t, u.Host, b, "u")
	ctx := context.Background()
	mine := idempotency.Claim{Key: "k", Fingerprint: "f", Token: "mine"}
	theirs := idempotency.Claim{Key: "k", Fingerprint: "f", Token: "theirs"}
	if out, err := b.Claim(ctx, []idempotency.Claim{mine}); err != nil || out[0].State != idempotency.Claimed {
		t.Fatalf("Claim = %v, %v", out, err)
	}
	t.Cleanup(func() { b.one().rdb.Del(ctx, b.idemKey("k")) })
	if out, err := b.Claim(ctx, []idempotency.Claim{theirs}); err != nil || out[0].State != idempotency.InFlight {
		t.Fatalf("second Claim = %v, %v; want InFlight", out, err)
	}
	// The claim lapses; another request claims the key.
	b.one().rdb.Del(ctx, b.idemKey("k"))
	if out, err := b.Claim(ctx, []idempotency.Claim{theirs}); err != nil || out[0].State != idempotency.Claimed {
		t.Fatalf("Claim after the lapse = %v, %v", out, err)
	}
	p := &Publication{Message: message("late"), UIDs: []string{"u"}, Claim: &mine, Answer: `{"id":"late"}`}
	if err := b.PublishAll(ctx, []*Publication{p}); err != nil {
		t.Fatal(err)
	}
	if !p.Refused || p.Finished {
		t.Errorf("publish on a lapsed claim: refused %v, finished %v; want refused", p.Refused, p.Finished)
	}
	q := &Publication{Message: message("theirs"), UIDs: []string{"u"}, Claim: &theirs, Answer: `{"id":"theirs"}`}
	if err := b.PublishAll(ctx, []*Publication{q}); err != nil {
		t.Fatal(err)
	}
	if q.Refused || !q.Finished {
		t.Errorf("publish on its own claim: refused %v, finished %v; want finished", q.Refused, q.Finished)
	}
	m, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Payload[len(m.Payload)-len("theirs"):]; got != "theirs" {
		t.Errorf("first message on the channel: %q, want theirs (late must not go out)", m.Payload)
	}
	if out, err := b.Claim(ctx, []idempotency.Claim{mine}); err != nil || out[0].State != idempotency.Replay || out[0].Answer != `{"id":"theirs"}` {
		t.Errorf("Claim after the publish = %+v, %v; want Replay of theirs", out, err)
	}
}

// TestClaimRedisDown: a claim Redis does not answer is an error, never a
// claim.
func TestClaimRedisDown(t *testing.T) {
	u := testutil.Redis(t)
	p := testutil.StartProxy(t, u.Host)
	b := newTestBroker(t, testutil.Via(u, p.Addr()), testutil.Prefix(t), newFakeLocal())
	p.SetMode(testutil.Cut)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if out, err := b.Claim(ctx, []idempotency.Claim{{Key: "k", Fingerprint: "f", Token: "t"}}); err == nil {
		t.Errorf("Claim with Redis down = %v, nil; want an error", out)
	}
}
