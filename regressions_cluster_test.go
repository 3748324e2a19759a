package main

// Regression tests for the cluster-mode faults a review found; see
// regressions_test.go.

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"go-pusher/internal/testutil"
	"go-pusher/message"
)

// slowProxy forwards to target; when delay is set, the next reply chunk
// from the target waits wait before it is passed on.
type slowProxy struct {
	ln     net.Listener
	target string
	delay  atomic.Bool
	wait   time.Duration
	frozen atomic.Bool // hold every reply: a hung Redis
}

func startSlowProxy(t *testing.T, target string, wait time.Duration) *slowProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, target: target, wait: wait}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Go(func() { io.Copy(up, c); up.Close(); c.Close() })
			wg.Go(func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := up.Read(buf)
					for p.frozen.Load() {
						time.Sleep(10 * time.Millisecond)
					}
					if n > 0 {
						if strings.HasPrefix(string(buf[:n]), "*3\r\n") && p.delay.CompareAndSwap(true, false) {
							time.Sleep(p.wait)
						}
						if _, err := c.Write(buf[:n]); err != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				c.Close()
				up.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// A Redis reply slower than the read timeout must not make go-redis run
// the publish script again: it is not idempotent, and the message would
// go out twice, at two offsets.
func TestClusterSlowRedisPublishesOnce(t *testing.T) {
	u := testRedis(t)
	p := startSlowProxy(t, u.Host, 2500*time.Millisecond)
	prefix := testPrefix(t)
	hub := newHub(hubConfig{SendBuffer: 10}, slog.New(slog.DiscardHandler), message.NoneLogger{}, nil)
	b, err := newRedisBroker(context.Background(), redisVia(u, p.ln.Addr().String()), prefix, historyLimits{Size: 100, TTL: time.Minute}, 5*time.Second, hub, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())

	// Another node subscribes to uid "u".
	other := redis.NewClient(&redis.Options{Addr: u.Host})
	defer other.Close()
	sub := other.Subscribe(context.Background(), b.channel("u"))
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}

	p.delay.Store(true) // Redis answers late, once
	if _, err := b.Publish(context.Background(), newMessage("id1", []byte("hello"), time.Now()), []string{"u"}); err == nil {
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
	other.Del(context.Background(), b.stateKey("u"), b.histKey("u"))
}

// A "subscribe" answer to an older SUBSCRIBE, arriving after the syncer
// sent an UNSUBSCRIBE, must not count: a since= replay would read history
// while the node is not subscribed, and miss what is published meanwhile.
func TestClusterNoStaleSubscriptionConfirmation(t *testing.T) {
	u := testRedis(t)
	prefix := testPrefix(t)
	hub := newHub(hubConfig{SendBuffer: 10}, slog.New(slog.DiscardHandler), message.NoneLogger{}, nil)
	b, err := newRedisBroker(context.Background(), u.String(), prefix, historyLimits{Size: 100, TTL: time.Minute}, 5*time.Second, hub, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// Run the receiver only; the test plays the syncer, so the order of
	// SUBSCRIBE/UNSUBSCRIBE is the test's.
	b.wg.Add(1)
	go b.run()
	defer b.Close(context.Background())
	waitFor(t, "pub/sub connected", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.ps != nil })

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
		if err == nil {
			time.Sleep(20 * time.Millisecond)
			if numsub() == 0 {
				stale++ // "confirmed", yet nobody on this node listens
			}
		}
		b.sync()
		waitFor(t, "resubscribed", func() bool { return numsub() == 1 })
	}
	if stale > 0 {
		t.Errorf("waitSubscribed returned nil %d/20 times while the node was not subscribed", stale)
	}
}

// A hung Redis at shutdown must not take the whole -shutdown-timeout:
// connections still get their 1001.
func TestClusterHungRedisStillGivesConnections1001(t *testing.T) {
	u := testRedis(t)
	p := startSlowProxy(t, u.Host, 0)
	ts := startNode(t, redisVia(u, p.ln.Addr().String()), testPrefix(t), "-shutdown-timeout", "3s")
	waitReady(t, ts)
	conn := dialSubscribed(t, ts, "alice")
	p.frozen.Store(true) // Redis hangs: connections stay up, no reply comes
	defer p.frozen.Store(false)
	go ts.stop()
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
	wantMessage(t, ca, "m2", position{first.epoch, 2})
	wantMessage(t, ca, "m3", position{first.epoch, 3})
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
	u := testRedis(t)
	prefix := testPrefix(t)
	g := &gapPair{t: t, proxy: testutil.StartProxy(t, u.Host)}
	g.a = startNode(t, redisVia(u, g.proxy.Addr()), prefix)
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
	waitFor(g.t, "a unready", func() bool { code, _ := g.a.get("/readyz"); return code == http.StatusServiceUnavailable })
}

// restore gives a its Redis back and waits until a is subscribed again.
func (g *gapPair) restore() {
	g.t.Helper()
	g.proxy.SetMode(testutil.Forward)
	waitFor(g.t, "alice on both nodes again", g.both)
	waitReady(g.t, g.a)
}

// Every line the binary writes to stderr is one structured record, go-redis's
// own complaints about a lost Redis included (go-redis prints plain lines
// through a logger of its own unless it is given ours).
func TestBinaryLogsRedisOutageStructured(t *testing.T) {
	u, prefix := testRedis(t), testPrefix(t)
	proxy := testutil.StartProxy(t, u.Host)
	p := startBinary(t, buildBinary(t), nil, "PUSHER_REDIS_URL="+redisVia(u, proxy.Addr()), "PUSHER_REDIS_PREFIX="+prefix, "PUSHER_MESSAGE_LOG=none")
	tok, _ := IssueToken(testSecret, "u1", time.Hour, time.Now())
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/ws?token="+tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	proxy.Stop() // Redis refuses connections: go-redis's dialler gives up and says so
	t.Cleanup(func() { t.Logf("stderr:\n%s", p.stderr.String()) })
	waitFor(t, "go-redis's line about failed dials", func() bool {
		req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/send", strings.NewReader(`{"uid":"u1","message":"x"}`))
		req.Header.Set("Authorization", "Bearer "+testAPIKey)
		req.Header.Set("Content-Type", "application/json") // so that it asks Redis who is online
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		// go-redis's words (v9.23), plain or in our record.
		out := p.stderr.String()
		return strings.Contains(out, "failed to dial") || strings.Contains(out, "source=go-redis")
	})
	for _, line := range strings.Split(strings.TrimSpace(p.stderr.String()), "\n") {
		if !strings.HasPrefix(line, "time=") || !strings.Contains(line, " level=") {
			t.Errorf("stderr line is not a structured record: %q", line)
		}
	}
}
