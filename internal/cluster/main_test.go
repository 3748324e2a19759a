package cluster

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

// redisCluster is the Redis Cluster this package's tests share.
var redisCluster testutil.SharedRedisCluster

// TestMain fails the package when a test leaves a goroutine behind: the
// broker's goroutines end with Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(withRedisCluster{m})
}

// withRedisCluster stops the shared Redis Cluster once the tests ran,
// before goleak looks for goroutines left.
type withRedisCluster struct{ m *testing.M }

func (w withRedisCluster) Run() int {
	defer redisCluster.Stop()
	return w.m.Run()
}

// fakeLocal is this node's connections as the broker sees them: it keeps
// what it is given.
type fakeLocal struct {
	mu        sync.Mutex
	delivered map[string][]stream.Item
	resynced  []string
	// disconnected: "uid: reason" of each Disconnect
	disconnected []string
}

func newFakeLocal() *fakeLocal { return &fakeLocal{delivered: map[string][]stream.Item{}} }

func (l *fakeLocal) Deliver(uid string, it stream.Item) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.delivered[uid] = append(l.delivered[uid], it)
}

func (l *fakeLocal) Disconnect(uid, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.disconnected = append(l.disconnected, uid+": "+reason)
}

func (l *fakeLocal) Resync(uid string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.resynced = append(l.resynced, uid)
}

// items returns what was delivered to uid, in order.
func (l *fakeLocal) items(uid string) []stream.Item {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]stream.Item(nil), l.delivered[uid]...)
}

// offsets returns the offsets delivered to uid, in order.
func (l *fakeLocal) offsets(uid string) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []uint64
	for _, it := range l.delivered[uid] {
		out = append(out, it.Off)
	}
	return out
}

// newTestBroker connects a broker with a history of 100 to redisURL under
// prefix; the test starts it (or plays its goroutines) and it is closed
// when the test ends.
func newTestBroker(t *testing.T, redisURL, prefix string, local Local) *Broker {
	t.Helper()
	b, err := New(context.Background(), Config{URL: redisURL, Prefix: prefix, HistorySize: 100, HistoryTTL: time.Minute, OpTimeout: 5 * time.Second, IdempotencyTTL: time.Minute},
		local, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// subscribeAside subscribes to uid's channel of b on a connection of the
// test's own, and drops uid's keys when the test ends.
func subscribeAside(t *testing.T, addr string, b *Broker, uid string) *redis.PubSub {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	sub := rdb.Subscribe(context.Background(), b.channel(uid))
	t.Cleanup(func() {
		sub.Close()
		rdb.Del(context.Background(), b.stateKey(uid), b.histKey(uid))
		rdb.Close()
	})
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	return sub
}

func message(text string) *stream.Message {
	return stream.NewMessage(text, []byte(text), time.Now())
}

var waitFor = testutil.WaitFor

// one is the shard of a broker on a single Redis.
func (b *Broker) one() *shard { return b.routes.Load().shards[0] }
