package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"go-pusher/internal/testutil"
)

// pipelineCounter counts the pipelines a client sends: each is one round
// trip.
type pipelineCounter struct{ n atomic.Int64 }

func (*pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (*pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// TestPublishAllIsOneRoundTrip: the messages of a batch, to many uids,
// reach Redis in one pipeline, and each uid's in order.
func TestPublishAllIsOneRoundTrip(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	subA, subB := subscribeAside(t, u.Host, b, "a"), subscribeAside(t, u.Host, b, "b")
	var pubs []*Publication
	for i := range 100 {
		uids := []string{"a"}
		if i%2 == 1 {
			uids = []string{"a", "b", "nobody"}
		}
		pubs = append(pubs, &Publication{Message: message(fmt.Sprint(i)), UIDs: uids})
	}
	var count pipelineCounter
	b.one().rdb.AddHook(&count)
	if err := b.PublishAll(context.Background(), pubs); err != nil {
		t.Fatal(err)
	}
	if n := count.n.Load(); n != 1 {
		t.Errorf("PublishAll of 100 messages took %d round trips, want 1", n)
	}
	for i, p := range pubs {
		if want := map[bool]string{true: "[nobody]", false: "[]"}[i%2 == 1]; fmt.Sprint(p.Gone) != want {
			t.Errorf("publication %d: gone %v, want %s", i, p.Gone, want)
		}
	}
	// a got every message, b the odd ones, each in order.
	for _, r := range []struct {
		name        string
		sub         *redis.PubSub
		first, step int
	}{{"a", subA, 0, 1}, {"b", subB, 1, 2}} {
		for want := r.first; want < 100; want += r.step {
			m, err := r.sub.ReceiveMessage(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, text, _ := strings.Cut(m.Payload[strings.LastIndex(m.Payload, "|"):], "|"); text != fmt.Sprint(want) {
				t.Fatalf("%s got %q, want message %d next", r.name, m.Payload, want)
			}
		}
	}
}

// replyError is an error reply of Redis, as go-redis reports one.
type replyError string

func (e replyError) Error() string { return string(e) }

func (replyError) RedisError() {}

func callsFor(uids []string, errs []error) []publishCall {
	calls := make([]publishCall, len(uids))
	for i, uid := range uids {
		calls[i] = publishCall{uid: uid, cmd: redis.NewCmd(context.Background())}
		if errs[i] != nil {
			calls[i].cmd.SetErr(errs[i])
		}
	}
	return calls
}

// TestNoScriptKeepsOrder: the calls Redis refused with NOSCRIPT are run
// again only when no later message to the same uid ran already.
func TestNoScriptKeepsOrder(t *testing.T) {
	noscript := replyError("NOSCRIPT No matching script")
	all := []int{0, 1, 2}
	again, err := noScript(callsFor([]string{"a", "b", "a"}, []error{nil, noscript, nil}), all, 0)
	if err != nil || fmt.Sprint(again) != "[1]" {
		t.Errorf("b refused, a ran twice: again %v, %v; want [1]", again, err)
	}
	if _, err := noScript(callsFor([]string{"a", "b", "a"}, []error{noscript, nil, nil}), all, 0); err == nil {
		t.Error("a's first message refused and its second ran: want an error, not a reordering retry")
	}
	if _, err := noScript(callsFor([]string{"a", "b", "c"}, []error{noscript, nil, nil}), all, 1); err == nil {
		t.Error("NOSCRIPT on the second attempt: want an error")
	}
	if _, err := noScript(callsFor([]string{"a", "b", "c"}, []error{nil, replyError("ERR other"), nil}), all, 0); err == nil {
		t.Error("another error: want it returned")
	}
}

// TestHungRedisBoundsPublish: with Redis hung, concurrent lookups and
// single publishes (automatic pipelining: they run on the pipeliner's
// context, not the caller's) still end within about OpTimeout, and Close
// keeps to its deadline.
func TestHungRedisBoundsPublish(t *testing.T) {
	u := testutil.Redis(t)
	p := testutil.StartProxy(t, u.Host)
	const op = time.Second
	b, err := New(context.Background(), Config{URL: testutil.Via(u, p.Addr()), Prefix: testutil.Prefix(t), HistorySize: 100, HistoryTTL: time.Minute, OpTimeout: op, IdempotencyTTL: time.Minute},
		newFakeLocal(), slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	p.SetMode(testutil.Blackhole)
	var wg sync.WaitGroup
	var worst atomic.Int64
	for i := range 32 {
		wg.Go(func() {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), op)
			defer cancel()
			var err error
			if i%2 == 0 {
				_, err = b.Publish(ctx, message("m"), []string{"u"})
			} else {
				_, _, err = b.Online(ctx, []string{"u"})
			}
			if err == nil {
				t.Error("a call with Redis hung succeeded")
			}
			if d := time.Since(start); int64(d) > worst.Load() {
				worst.Store(int64(d))
			}
		})
	}
	wg.Wait()
	if d := time.Duration(worst.Load()); d > 2*op {
		t.Errorf("the slowest call with Redis hung took %s, OpTimeout %s", d.Round(time.Millisecond), op)
	}
	ctx, cancel := context.WithTimeout(context.Background(), op)
	defer cancel()
	start := time.Now()
	_ = b.Close(ctx) // its error is the deadline's
	if d := time.Since(start); d > op+op/2 {
		t.Errorf("Close with a %s deadline took %s", op, d.Round(time.Millisecond))
	}
}

// TestPublishWaitsForAReplica: on a master with replicas a publish ends
// with WAIT 1, and one no replica acknowledged is an error (a 503), not
// a 200 that a failover could take back. The Redis here has no replica;
// the test says it has one.
func TestPublishWaitsForAReplica(t *testing.T) {
	u := testutil.Redis(t)
	b := newTestBroker(t, u.String(), testutil.Prefix(t), newFakeLocal())
	subscribeAside(t, u.Host, b, "u")
	ctx := context.Background()
	if _, err := b.Publish(ctx, message("m1"), []string{"u"}); err != nil {
		t.Fatalf("no replica: %v", err)
	}
	b.mu.Lock()
	b.one().replicas.Store(1)
	b.mu.Unlock()
	start := time.Now()
	_, err := b.Publish(ctx, message("m2"), []string{"u"})
	if !errors.Is(err, errNotReplicated) {
		t.Errorf("a replica that never acknowledges: %v, want errNotReplicated", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the WAIT took %s, want at most about a second", took)
	}
}

// TestPublishWaitRefused: a WAIT that Redis refuses (an ACL without it)
// is the publish's error, not a panic nor a retry of scripts that ran.
func TestPublishWaitRefused(t *testing.T) {
	u := testutil.Redis(t)
	admin := redis.NewClient(&redis.Options{Addr: u.Host})
	defer admin.Close()
	ctx := context.Background()
	user := testutil.Prefix(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-wait").Err(); err != nil {
		t.Fatal(err)
	}
	defer admin.Do(ctx, "ACL", "DELUSER", user)
	nowait := *u
	nowait.User = url.UserPassword(user, "pw")
	b := newTestBroker(t, nowait.String(), testutil.Prefix(t), newFakeLocal())
	sub := subscribeAside(t, u.Host, b, "u")
	b.mu.Lock()
	b.one().replicas.Store(1)
	b.mu.Unlock()
	_, err := b.Publish(ctx, message("m"), []string{"u"})
	if err == nil || !strings.Contains(err.Error(), "WAIT") {
		t.Errorf("publish with WAIT refused: %v, want the WAIT's error", err)
	}
	if m, err := sub.ReceiveMessage(ctx); err != nil || !strings.HasSuffix(m.Payload, "|m") {
		t.Fatalf("the script ran before the WAIT: %v, %v", m, err)
	}
	if m, err := sub.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
		t.Errorf("a second copy on the channel: %v", m)
	}
}
