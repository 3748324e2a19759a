package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

// A Redis reply slower than the read timeout must not make go-redis run
// the publish script again: it is not idempotent, and the message would
// go out twice, at two offsets.
func TestSlowRedisPublishesOnce(t *testing.T) {
	u := testutil.Redis(t)
	p := testutil.StartSlowProxy(t, u.Host, 2500*time.Millisecond)
	b := newTestBroker(t, testutil.Via(u, p.Addr()), testutil.Prefix(t), newFakeLocal())

	sub := subscribeAside(t, u.Host, b, "u") // another node with uid "u"

	p.Delay.Store(true) // Redis answers late, once
	if _, err := b.Publish(context.Background(), message("hello"), []string{"u"}); err == nil {
		t.Error("Publish with a reply later than the read timeout = nil, want an error (outcome unknown)")
	}
	var got []string
	for {
		m, err := sub.ReceiveTimeout(context.Background(), 3*time.Second)
		if err != nil {
			break
		}
		if msg, ok := m.(*redis.Message); ok {
			got = append(got, msg.Payload)
		}
	}
	if len(got) != 1 {
		t.Errorf("one publish reached the channel %d times (%q), want once", len(got), got)
	}
}

// A "subscribe" answer to an older SUBSCRIBE, arriving after the syncer
// sent an UNSUBSCRIBE, must not count: a since= replay would read history
// while the node is not subscribed, and miss what is published meanwhile.
func TestNoStaleSubscriptionConfirmation(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	// Run the receiver only; the test plays the syncer, so the order of
	// SUBSCRIBE/UNSUBSCRIBE is the test's.
	b.startShard(b.one())
	waitFor(t, "pub/sub connected", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.one().ps != nil })

	probe := redis.NewClient(&redis.Options{Addr: u.Host})
	defer probe.Close()
	ch := b.channel("x")
	numsub := func() int64 { r, _ := probe.PubSubNumSub(context.Background(), ch).Result(); return r[ch] }

	b.want("x", true)
	b.sync()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := b.waitSubscribed(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	cancel()
	stale := 0
	for range 20 {
		b.want("x", false) // the last local connection left...
		b.sync()           // ...UNSUBSCRIBE is on its way
		b.want("x", true)  // a since= connection arrives
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err := b.waitSubscribed(ctx, "x")
		cancel()
		if err == nil && numsub() == 0 {
			stale++ // "confirmed", yet nobody on this node listens
		}
		b.sync()
		waitFor(t, "resubscribed", func() bool { return numsub() == 1 })
	}
	if stale > 0 {
		t.Errorf("waitSubscribed returned nil %d/20 times while the node was not subscribed", stale)
	}
}

// After a lost pub/sub connection, repair delivers from history every
// message up to what Redis holds; a message published after the new
// subscription and read from history by repair, whose pub/sub copy the
// receiver has not handled yet, must not be delivered a second time when
// it is.
func TestRepairDropsTheLiveCopy(t *testing.T) {
	u := testutil.Redis(t)
	local := newFakeLocal()
	b := newTestBroker(t, u.String(), testutil.Prefix(t), local)
	b.want("u", true) // a connection of u here; the syncer does not run

	sub := subscribeAside(t, u.Host, b, "u") // the test plays this node's pub/sub connection
	next := func() *redis.Message {
		m, err := sub.ReceiveMessage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	publish := func(text string) {
		if _, err := b.Publish(context.Background(), message(text), []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}

	publish("m1")
	b.handle(next()) // delivered: last = e:1

	// The pub/sub connection is lost and made again (what session does).
	b.mu.Lock()
	b.one().lostLink = true
	b.repairing["u"] = &repairState{lost: true}
	b.mu.Unlock()
	publish("m2")
	next() // m2 was published while this node was not subscribed: missed
	b.mu.Lock()
	b.confirmed[b.channel("u")] = struct{}{} // the new SUBSCRIBE is answered
	b.mu.Unlock()
	publish("m3")
	inFlight := next() // m3's pub/sub copy: not handled yet by the receiver

	b.repair("u")      // m2 and m3 from history
	b.handle(inFlight) // the receiver catches up

	if offs := local.offsets("u"); fmt.Sprint(offs) != "[1 2 3]" {
		t.Errorf("offsets delivered = %v, want 1 2 3 once each", offs)
	}
}

// TestLateMessageLeavesNoStalePosition: a message Redis delivers after
// this node dropped the uid (its last connection left and the UNSUBSCRIBE
// is on its way) is not delivered and leaves no position behind: from
// one, the uid's next connection here, without since=, would be repaired
// and sent old history.
func TestLateMessageLeavesNoStalePosition(t *testing.T) {
	u := testutil.Redis(t)
	local := newFakeLocal()
	prefix := testutil.Prefix(t)
	b := newTestBroker(t, u.String(), prefix, local)
	b.Start()
	other := newTestBroker(t, u.String(), prefix, newFakeLocal()) // another node, with u
	other.Start()
	other.UserOnline("u")
	b.UserOnline("u")
	rdb := redis.NewClient(&redis.Options{Addr: u.Host})
	defer rdb.Close()
	defer rdb.Del(context.Background(), b.stateKey("u"), b.histKey("u"))
	waitFor(t, "u subscribed on both nodes", func() bool {
		r, _ := rdb.PubSubNumSub(context.Background(), b.channel("u")).Result()
		return r[b.channel("u")] == 2
	})
	if _, err := b.Publish(context.Background(), message("m1"), []string{"u"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "m1 delivered here", func() bool { return len(local.offsets("u")) == 1 })
	epoch := local.items("u")[0].Epoch

	b.UserOffline("u")
	waitFor(t, "unsubscribed here", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, sub := b.one().subscribed["u"]
		return !sub && len(b.pending) == 0
	})
	// What Redis may still deliver after the UNSUBSCRIBE: offset 2.
	for i := 2; i <= 6; i++ {
		if _, err := other.Publish(context.Background(), message(fmt.Sprintf("m%d", i)), []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}
	b.handle(&redis.Message{Channel: b.channel("u"), Payload: stream.Position{Epoch: epoch, N: 2}.String() + "|" + encodeEnvelope(message("m2"))})
	// The hub is still told (it finds no connection and records the
	// failure), but nothing is kept of it here.
	b.mu.Lock()
	_, stale := b.last["u"]
	b.mu.Unlock()
	if stale {
		t.Error("a message for a uid this node dropped left a position behind")
	}

	b.UserOnline("u") // a new connection, without since=
	waitFor(t, "subscribed again and repaired", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, ok := b.confirmed[b.channel("u")]
		_, held := b.repairing["u"]
		return ok && !held
	})
	if _, err := other.Publish(context.Background(), message("new"), []string{"u"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new message delivered", func() bool { return len(local.offsets("u")) >= 3 })
	if offs := local.offsets("u"); fmt.Sprint(offs) != "[1 2 7]" {
		t.Errorf("offsets handed to the hub = %v, want 1, the late 2, then 7 (nothing of 3-6, published while no connection was here)", offs)
	}
}

// A uid held for repair at the start of a pub/sub session that goes offline
// before the syncer subscribes it is never subscribed: repair must not wait
// for its subscription in the syncer, one such uid after another, and its
// last position is forgotten.
func TestOfflineUIDsDoNotStallTheSyncer(t *testing.T) {
	u := testutil.Redis(t)
	p := testutil.StartProxy(t, u.Host)
	b := newTestBroker(t, testutil.Via(u, p.Addr()), testutil.Prefix(t), newFakeLocal())
	b.startShard(b.one()) // the test plays the syncer
	b.wg.Add(1)
	go b.repairLoop()
	other := redis.NewClient(&redis.Options{Addr: u.Host})
	defer other.Close()
	defer other.Del(context.Background(), b.stateKey("x1"), b.histKey("x1"), b.stateKey("x2"), b.histKey("x2"))
	waitFor(t, "pub/sub connected", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.one().ps != nil })
	for _, uid := range []string{"x1", "x2"} {
		b.want(uid, true)
	}
	b.sync()
	for _, uid := range []string{"x1", "x2"} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := b.waitSubscribed(ctx, uid); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := b.Publish(context.Background(), message("m"), []string{uid}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "delivered", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.last) == 2 })

	p.SetMode(testutil.Cut)
	waitFor(t, "link lost", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.one().lostLink && b.one().ps == nil })
	p.SetMode(testutil.Forward)
	waitFor(t, "new session", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.one().ps != nil && len(b.repairing) == 2 })
	// Both uids' last connections leave before the syncer runs.
	b.want("x1", false)
	b.want("x2", false)
	start := time.Now()
	b.sync()
	took := time.Since(start)
	b.mu.Lock()
	lastLeft := len(b.last)
	b.mu.Unlock()
	if took > time.Second {
		t.Errorf("sync took %s repairing two uids nobody wants (nor subscribes): the syncer stalls 5 s per uid", took.Round(time.Millisecond))
	}
	if lastLeft != 0 {
		t.Errorf("b.last keeps %d uids that have no connection and no subscription", lastLeft)
	}
}

// Close waits for the repairer, which may be repairing uid after uid
// against a hung Redis, each read up to the 2 s read timeout: shutdown
// must not overrun its deadline, neither by that much per uid nor by one
// read timeout.
func TestCloseBoundedDuringARepair(t *testing.T) {
	u := testutil.Redis(t)
	p := testutil.StartSlowProxy(t, u.Host, 0)
	b := newTestBroker(t, testutil.Via(u, p.Addr()), testutil.Prefix(t), newFakeLocal())
	b.Start()
	uids := []string{"h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8"}
	for _, uid := range uids {
		b.want(uid, true)
	}
	waitFor(t, "healthy", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.one().healthy && len(b.confirmed) == len(uids) })
	// As after a reconnection: every uid is held for repair.
	b.mu.Lock()
	for _, uid := range uids {
		b.last[uid] = stream.Position{Epoch: "e", N: 1}
		b.repairing[uid] = &repairState{lost: true}
	}
	b.mu.Unlock()
	p.Frozen.Store(true) // Redis hangs
	defer p.Frozen.Store(false)
	b.kick()
	select {
	case b.workKick <- struct{}{}:
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	b.Close(ctx)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("Close with a 1 s deadline took %s", took.Round(time.Millisecond))
	}
}

// TestExpectHoldsUntilTheSubscription: the offset Expect reads before a
// registration becomes the new subscription's baseline when the
// registration's UserOnline comes, however long the subscription then
// takes; an expectation whose registration never comes is forgotten.
func TestExpectHoldsUntilTheSubscription(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	rdb := redis.NewClient(&redis.Options{Addr: u.Host})
	defer rdb.Close()
	defer rdb.Del(context.Background(), b.stateKey("u"), b.histKey("u"), b.stateKey("v"))
	rdb.HSet(context.Background(), b.stateKey("u"), "e", "abc", "n", 41)

	b.Expect(context.Background(), "u")
	b.Expect(context.Background(), "v") // its connection is refused
	b.UserOnline("u")                   // the syncer does not run: an outage, say
	b.mu.Lock()
	base, expected := b.base["u"], len(b.expected)
	b.mu.Unlock()
	if base != (stream.Position{Epoch: "abc", N: 41}) || expected != 1 {
		t.Errorf("after UserOnline: base %v, %d expectations; want abc:41 and only v's", base, expected)
	}
	b.mu.Lock()
	b.expected["v"] = expectation{b.expected["v"].pos, time.Now().Add(-2 * maxExpectationAge)}
	b.mu.Unlock()
	b.startShard(b.one()) // the receiver only: the test runs the syncer once
	waitFor(t, "connected", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.one().ps != nil })
	b.sync()
	b.mu.Lock()
	_, stale := b.expected["v"]
	b.mu.Unlock()
	if stale {
		t.Error("an expectation whose registration never came is kept")
	}
}
