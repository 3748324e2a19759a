package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/idempotency"
	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

// clusterUIDs are uids whose slots fall on every master of a three-master
// cluster, braces included (their hash tag is a hash of the uid).
var clusterUIDs = []string{"alice", "bob", "carol", "dave", "erin", "frank", "a}b", "}x", "{y}", "日本"}

// TestKeySlotIsRedis: keySlot agrees with CLUSTER KEYSLOT, and every key
// and the channel of a uid share a slot, whatever braces the uid holds.
func TestKeySlotIsRedis(t *testing.T) {
	c := redisCluster.Get(t)
	b := newTestBroker(t, c.URL(), testutil.Prefix(t), newFakeLocal())
	rdb := redis.NewClient(&redis.Options{Addr: c.Addrs()[0]})
	defer rdb.Close()
	for _, uid := range clusterUIDs {
		keys := []string{b.channel(uid), b.stateKey(uid), b.histKey(uid), b.guardKey(uid, "k{1}")}
		for _, k := range keys {
			want, err := rdb.ClusterKeySlot(context.Background(), k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if got := keySlot(k); int64(got) != want {
				t.Errorf("keySlot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, want)
			}
			if keySlot(k) != keySlot(keys[0]) {
				t.Errorf("uid %q: %q is in slot %d, its channel in %d", uid, k, keySlot(k), keySlot(keys[0]))
			}
		}
		if got, ok := b.uidOf(b.channel(uid)); !ok || got != uid {
			t.Errorf("uidOf(channel(%q)) = %q, %v", uid, got, ok)
		}
	}
}

// startClusterBroker starts a broker on the shared Redis Cluster.
func startClusterBroker(t *testing.T, url, prefix string) (*Broker, *fakeLocal) {
	t.Helper()
	local := newFakeLocal()
	b := newTestBroker(t, url, prefix, local)
	b.Start()
	return b, local
}

// TestRedisClusterRoutes: on a Redis Cluster, uids on every master are
// online once a broker subscribes them, messages from another broker
// reach them in order through sharded pub/sub, a uid nobody holds is
// gone, and history replays from the uid's master.
func TestRedisClusterRoutes(t *testing.T) {
	c := redisCluster.Get(t)
	prefix := testutil.Prefix(t)
	a, local := startClusterBroker(t, c.URL(), prefix)
	sender, _ := startClusterBroker(t, c.URL(), prefix)
	if n := len(a.routes.Load().shards); n != 3 {
		t.Fatalf("%d masters, want 3", n)
	}
	masters := map[*shard]bool{}
	for _, uid := range clusterUIDs {
		a.UserOnline(uid)
		masters[a.shardOf(uid)] = true
	}
	if len(masters) != 3 {
		t.Fatalf("the test's uids are on %d masters, want 3", len(masters))
	}
	a.mu.Lock()
	for s := range masters {
		if n := s.replicas.Load(); n != 1 {
			t.Errorf("master %s: %d replicas known, want 1 (its publishes WAIT for it)", s.addr, n)
		}
	}
	a.mu.Unlock()
	ctx := context.Background()
	waitFor(t, "subscribed", func() bool {
		online, _, err := sender.Online(ctx, clusterUIDs)
		return err == nil && len(online) == len(clusterUIDs)
	})
	var pubs []*Publication
	for i := range 3 {
		pubs = append(pubs, &Publication{Message: message(fmt.Sprint("m", i)), UIDs: append([]string{"nobody"}, clusterUIDs...)})
	}
	if err := sender.PublishAll(ctx, pubs); err != nil {
		t.Fatal(err)
	}
	for _, p := range pubs {
		if fmt.Sprint(p.Gone) != "[nobody]" {
			t.Errorf("gone %v, want [nobody]", p.Gone)
		}
	}
	for _, uid := range clusterUIDs {
		waitFor(t, "delivered to "+uid, func() bool { return len(local.items(uid)) == 3 })
		if offs := local.offsets(uid); fmt.Sprint(offs) != "[1 2 3]" {
			t.Errorf("%s: offsets %v, want [1 2 3]", uid, offs)
		}
		items, ok, err := sender.readSince(ctx, uid, stream.Position{Epoch: local.items(uid)[0].Epoch, N: 1})
		if err != nil || !ok || len(items) != 2 || string(items[1].M.Data) != "m2" {
			t.Errorf("%s: history since 1 = %d items, complete %v, %v; want m1, m2", uid, len(items), ok, err)
		}
	}
	if err := a.Ready(ctx); err != nil {
		t.Errorf("Ready: %v", err)
	}
}

// TestRedisClusterGuard: on a Redis Cluster, a second claim of a key
// (the first lapsed with its node after sending) does not send again: it
// gets the first answer.
func TestRedisClusterGuard(t *testing.T) {
	c := redisCluster.Get(t)
	prefix := testutil.Prefix(t)
	a, local := startClusterBroker(t, c.URL(), prefix)
	a.UserOnline("u")
	ctx := context.Background()
	waitFor(t, "subscribed", func() bool { on, _, err := a.Online(ctx, []string{"u"}); return err == nil && len(on) == 1 })
	first := idempotency.Claim{Key: "k", Fingerprint: "f", Token: "first"}
	p := &Publication{Message: message("once"), UIDs: []string{"u"}, Claim: &first, Answer: `{"id":"first"}`}
	if err := a.PublishAll(ctx, []*Publication{p}); err != nil || p.Finished {
		t.Fatalf("publish: %v, finished %v (on a cluster the key is finished after, by the caller)", err, p.Finished)
	}
	second := idempotency.Claim{Key: "k", Fingerprint: "f", Token: "second"}
	q := &Publication{Message: message("twice"), UIDs: []string{"u"}, Claim: &second, Answer: `{"id":"second"}`}
	if err := a.PublishAll(ctx, []*Publication{q}); err != nil {
		t.Fatal(err)
	}
	if q.Replay != `{"id":"first"}` {
		t.Errorf("second claim's publish: replay %q, want the first answer", q.Replay)
	}
	other := idempotency.Claim{Key: "k", Fingerprint: "g", Token: "other"}
	r := &Publication{Message: message("other"), UIDs: []string{"u"}, Claim: &other, Answer: `{"id":"other"}`}
	if err := a.PublishAll(ctx, []*Publication{r}); err != nil || !r.Refused {
		t.Errorf("a different request on the key: %v, refused %v; want refused", err, r.Refused)
	}
	waitFor(t, "delivered", func() bool { return len(local.items("u")) >= 1 })
	// A later message shows that nothing else arrived in between.
	if err := a.PublishAll(ctx, []*Publication{{Message: message("after"), UIDs: []string{"u"}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delivered", func() bool { return len(local.items("u")) >= 2 })
	var got []string
	for _, it := range local.items("u") {
		got = append(got, string(it.M.Data))
	}
	if fmt.Sprint(got) != "[once after]" {
		t.Errorf("delivered %q, want once, after", got)
	}
}

// TestRedisClusterURL: the cluster URL form parses; a bad one is refused
// without echoing the password.
func TestRedisClusterURL(t *testing.T) {
	for _, u := range []string{"redis+cluster://127.0.0.1:7000", "rediss+cluster://u:p@h:1?addr=h:2&addr=h:3", "redis://h:1/0"} {
		if err := CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q) = %v", u, err)
		}
	}
	for _, u := range []string{"redis+cluster://:secret@h:1?bogus=1", "http+cluster://h:1"} {
		err := CheckURL(u)
		if err == nil {
			t.Errorf("CheckURL(%q) = nil, want an error", u)
		} else if fmt := err.Error(); len(fmt) > 0 && containsSecret(fmt) {
			t.Errorf("CheckURL(%q) = %q: shows the password", u, fmt)
		}
	}
	if _, err := New(context.Background(), Config{URL: "redis+cluster://127.0.0.1:1", Prefix: "a{b}", OpTimeout: time.Second}, newFakeLocal(), nil, nil); err == nil {
		t.Error("a prefix with braces on a Redis Cluster: nil error")
	}
}

func containsSecret(s string) bool {
	for i := 0; i+6 <= len(s); i++ {
		if s[i:i+6] == "secret" {
			return true
		}
	}
	return false
}

// TestRedisClusterUnsure: on a Redis Cluster too, a registered node
// whose channel has no subscriber on a uid's master makes that uid, when
// it has no subscriber, uncertain (503) rather than offline (404), for
// the lookup and the publish alike.
func TestRedisClusterUnsure(t *testing.T) {
	c := redisCluster.Get(t)
	b, _ := startClusterBroker(t, c.URL(), testutil.Prefix(t))
	ctx := context.Background()
	waitFor(t, "registered", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.nodeIDs) == 1 })
	if _, off, err := b.Online(ctx, []string{"x"}); err != nil || len(off) != 1 {
		t.Fatalf("no other node: offline %v, %v; want x offline", off, err)
	}
	rdb, err := b.client(b.nodesKey())
	if err != nil {
		t.Fatal(err)
	}
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	rdb.HSet(ctx, b.nodesKey(), "silent", now.UnixMilli())
	b.beat(ctx)
	if _, _, err := b.Online(ctx, []string{"x"}); !errors.Is(err, ErrResyncing) {
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

// TestMasterWithoutSlotsIsNoShard: a master that serves no slot (a node
// just joined, as some node's gossip has it) is not routed to, nor
// followed.
func TestMasterWithoutSlotsIsNoShard(t *testing.T) {
	c := redisCluster.Get(t)
	b := newTestBroker(t, c.URL(), testutil.Prefix(t), newFakeLocal())
	shards, err := b.clusterShards(context.Background(), b.routes.Load())
	if err != nil {
		t.Fatal(err)
	}
	shards = append(shards, redis.ClusterShard{Nodes: []redis.Node{{IP: "127.0.0.1", Port: 1, Role: "master", Health: "online"}}})
	b.applyShards(shards)
	if n := len(b.routes.Load().shards); n != 3 {
		t.Errorf("%d shards, want the 3 masters with slots", n)
	}
}
