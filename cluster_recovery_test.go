package main

// Recovery across the nodes of a cluster, and what a node repairs after
// losing its Redis link.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

// TestClusterRecoveryOnAnotherNode: a client on node A stops reading (its
// network changed; A has not noticed), messages are sent through B, and
// the client comes back on C with since=: C replays them from Redis.
func TestClusterRecoveryOnAnotherNode(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 3)
		a, b, c := nodes[0], nodes[1], nodes[2]
		conn := a.dialStream("u", "format=json")
		b.sendWhenOnline("u", "m1")
		first := readFrame(t, conn)
		if first.Message != "m1" {
			t.Fatalf("first frame %+v", first)
		}
		last := first.pos(t)

		for i := 2; i <= 5; i++ {
			b.sendOK("u", fmt.Sprintf("m%d", i)) // reach the dead socket on A
		}
		conn.Close() // the client never read them

		again := c.dialStream("u", "since="+last.String())
		for i := 2; i <= 5; i++ {
			wantMessage(t, again, fmt.Sprintf("m%d", i), stream.Position{Epoch: last.Epoch, N: uint64(i)})
		}
		wantRecovered(t, again, true)
		a.sendWhenOnline("u", "live")
		wantMessage(t, again, "live", stream.Position{Epoch: last.Epoch, N: 6})
	})
}

// TestClusterEpochSurvivesNodeRestart: the history lives in Redis, so a
// node that restarts (here: a new node on the same Redis) recovers a
// client of the old one.
func TestClusterEpochSurvivesNodeRestart(t *testing.T) {
	u, prefix := testutil.Redis(t), testutil.Prefix(t)
	a := startNode(t, u.String(), prefix)
	waitReady(t, a)
	conn := a.dialStream("u", "format=json")
	a.sendWhenOnline("u", "m1")
	p := readFrame(t, conn).pos(t)
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}

	a2 := startNode(t, u.String(), prefix)
	waitReady(t, a2)
	again := a2.dialStream("u", "since="+p.String())
	wantRecovered(t, again, true)
	a2.sendWhenOnline("u", "m2")
	wantMessage(t, again, "m2", stream.Position{Epoch: p.Epoch, N: p.N + 1})
}

func TestClusterRecoveryTooOld(t *testing.T) {
	u, prefix := testutil.Redis(t), testutil.Prefix(t)
	a := startNode(t, u.String(), prefix, "-history-size", "2")
	waitReady(t, a)
	keep := a.dialStream("u", "format=json")
	a.sendWhenOnline("u", "m1")
	p := readFrame(t, keep).pos(t)
	for i := 2; i <= 5; i++ {
		a.sendOK("u", fmt.Sprintf("m%d", i))
		readFrame(t, keep)
	}
	old := a.dialStream("u", "since="+p.String())
	wantRecovered(t, old, false)
	recent := a.dialStream("u", fmt.Sprintf("since=%s:%d", p.Epoch, 3))
	wantMessage(t, recent, "m4", stream.Position{Epoch: p.Epoch, N: 4})
	wantMessage(t, recent, "m5", stream.Position{Epoch: p.Epoch, N: 5})
	wantRecovered(t, recent, true)
	other := a.dialStream("u", "since=ffff:3")
	wantRecovered(t, other, false)
}

// A hung Redis at shutdown must not take the whole -shutdown-timeout:
// connections still get their 1001.
func TestClusterHungRedisStillGivesConnections1001(t *testing.T) {
	u := testutil.Redis(t)
	p := testutil.StartSlowProxy(t, u.Host, 0)
	ts := startNode(t, testutil.Via(u, p.Addr()), testutil.Prefix(t), "-shutdown-timeout", "3s")
	waitReady(t, ts)
	conn := dialSubscribed(t, ts, "alice")
	p.Frozen.Store(true) // Redis hangs: connections stay up, no reply comes
	defer p.Frozen.Store(false)
	// Serve's result is not this test's subject (the close frame is);
	// the cleanup's stop waits for this one to end.
	go func() { _ = ts.stop() }()
	wantClose(t, conn, websocket.CloseGoingAway, "server shutting down")
}

// A node whose pub/sub connection drops while another node keeps the uid
// online misses what is published meanwhile; when it is back it delivers
// those messages from history, in order, before the live ones.
func TestClusterPubSubReconnectRepairsTheGap(t *testing.T) {
	g := startGapPair(t)
	b, ca, cb := g.b, g.ca, g.cb
	b.sendOK("alice", "m1")
	first := readFrame(t, ca).pos(t)
	readFrame(t, cb)

	g.cut()
	b.sendOK("alice", "m2") // 200: b's connection gets it, a's misses it
	readFrame(t, cb)
	g.restore()
	b.sendOK("alice", "m3")
	wantMessage(t, ca, "m2", stream.Position{Epoch: first.Epoch, N: 2})
	wantMessage(t, ca, "m3", stream.Position{Epoch: first.Epoch, N: 3})
}

// gapPair is alice connected (format=json) on node a, whose Redis link
// goes through a proxy the test cuts, and on node b, whose does not.
type gapPair struct {
	t      *testing.T
	a, b   *testServer
	ca, cb *websocket.Conn
	proxy  *testutil.Proxy
	both   func() bool // alice's channel has both nodes' subscriptions
}

func startGapPair(t *testing.T) *gapPair {
	t.Helper()
	u := testutil.Redis(t)
	prefix := testutil.Prefix(t)
	g := &gapPair{t: t, proxy: testutil.StartProxy(t, u.Host)}
	g.a = startNode(t, testutil.Via(u, g.proxy.Addr()), prefix)
	g.b = startNode(t, u.String(), prefix)
	waitReady(t, g.a)
	waitReady(t, g.b)
	g.ca = g.a.dialStream("alice", "format=json")
	g.cb = g.b.dialStream("alice", "format=json")
	rdb := redis.NewClient(&redis.Options{Addr: u.Host})
	t.Cleanup(func() {
		rdb.Del(context.Background(), prefix+":s:alice", prefix+":h:alice")
		rdb.Close()
	})
	g.both = func() bool {
		r, _ := rdb.PubSubNumSub(context.Background(), prefix+":u:alice").Result()
		return r[prefix+":u:alice"] == 2
	}
	waitFor(t, "alice on both nodes", g.both)
	return g
}

// cut takes a's Redis away and waits until a says so.
func (g *gapPair) cut() {
	g.t.Helper()
	g.proxy.SetMode(testutil.Cut)
	waitFor(g.t, "a unready", func() bool { code, _ := g.a.readyz(); return code == http.StatusServiceUnavailable })
}

// restore gives a its Redis back and waits until a is subscribed again.
func (g *gapPair) restore() {
	g.t.Helper()
	g.proxy.SetMode(testutil.Forward)
	waitFor(g.t, "alice on both nodes again", g.both)
	waitReady(g.t, g.a)
}

// End to end: a busy uid on two nodes; node a loses Redis and gets it
// back while b keeps sending. a's connection must see every offset once,
// in order.
func TestClusterRepairUnderLoad(t *testing.T) {
	u := testutil.Redis(t)
	prefix := testutil.Prefix(t)
	p := testutil.StartProxy(t, u.Host)
	a := startNode(t, testutil.Via(u, p.Addr()), prefix, "-history-size", "100000", "-send-buffer", "100000")
	b := startNode(t, u.String(), prefix, "-send-buffer", "100000", "-history-size", "100000")
	waitReady(t, a)
	waitReady(t, b)
	ca := a.dialStream("alice", "format=json")
	b.dialStream("alice", "format=json")
	rdb := redis.NewClient(&redis.Options{Addr: u.Host})
	defer rdb.Close()
	waitFor(t, "alice on both nodes", func() bool {
		r, _ := rdb.PubSubNumSub(context.Background(), prefix+":u:alice").Result()
		return r[prefix+":u:alice"] == 2
	})
	var sent atomic.Int64
	stop := hammer(4, func(int, int) bool {
		if code, _ := b.send("application/x-www-form-urlencoded", "uid=alice&message=x"); code == 200 {
			sent.Add(1)
		}
		return true
	})
	var offs []uint64
	var lastAt time.Time
	var maxGap time.Duration
	var gapAt uint64
	t0 := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ca.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, data, err := ca.ReadMessage()
			if err != nil {
				t.Logf("read: %v", err)
				return
			}
			var f frame
			if err := json.Unmarshal(data, &f); err != nil {
				t.Errorf("frame %q: %v", data, err)
			}
			pp, _ := stream.ParsePosition(f.Offset)
			offs = append(offs, pp.N)
			if now := time.Now(); !lastAt.IsZero() && now.Sub(lastAt) > maxGap {
				maxGap, gapAt = now.Sub(lastAt), pp.N
			}
			lastAt = time.Now()
		}
	}()
	for range 5 {
		time.Sleep(300 * time.Millisecond)
		p.SetMode(testutil.Cut)
		time.Sleep(300 * time.Millisecond)
		p.SetMode(testutil.Forward)
		w := time.Now()
		waitReady(t, a)
		t.Logf("a ready again after %s", time.Since(w))
	}
	stop()
	t.Logf("senders stopped after %s", time.Since(t0))
	ca.SetReadDeadline(time.Now().Add(2 * time.Second))
	<-done
	t.Logf("longest silence %s, before offset %d", maxGap, gapAt)
	dups, gaps := 0, 0
	for i := 1; i < len(offs); i++ {
		switch {
		case offs[i] <= offs[i-1]:
			dups++
		case offs[i] != offs[i-1]+1:
			gaps++
		}
	}
	if dups > 0 || gaps > 0 {
		t.Errorf("a's connection: %d duplicates, %d gaps", dups, gaps)
	}
	if n := int64(len(offs)); n != sent.Load() || n == 0 || offs[0] != 1 {
		t.Errorf("a's connection got %d frames for %d accepted sends", n, sent.Load())
	}
}

// TestClusterPubSubReconnectRepairsTheGap with one change: no message
// reached the node for the uid before its pub/sub connection dropped, so
// the node has no last position for it and repairs nothing.
func TestClusterRepairWithoutAnEarlierMessage(t *testing.T) {
	g := startGapPair(t)
	g.cut()
	g.b.sendOK("alice", "m1") // 200: b's connection gets it, a's misses it
	first := readFrame(t, g.cb).pos(t)
	g.restore()
	g.b.sendOK("alice", "m2")
	f := readFrame(t, g.ca)
	if f.Message != "m1" {
		t.Errorf("a's connection, registered before m1, got %q at %s first: m1 (%s) is lost without a trace but the offset gap", f.Message, f.Offset, first)
	}
}
