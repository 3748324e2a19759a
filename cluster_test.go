package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"go-pusher/internal/cluster"
	"go-pusher/internal/testutil"
)

// startNode starts one in-process cluster node.
// sendWhenOnline sends msg to uid as soon as this node sees uid online
// somewhere in the cluster (subscriptions take effect asynchronously):
// it retries the 404s until the first 200, so msg goes out once.
func (ts *testServer) sendWhenOnline(uid, msg string) {
	ts.t.Helper()
	waitFor(ts.t, uid+" online, seen from this node", func() bool {
		code, _ := ts.send("application/x-www-form-urlencoded", url.Values{"uid": {uid}, "message": {msg}}.Encode())
		return code == http.StatusOK
	})
}

func startNode(t *testing.T, redisURL, prefix string, args ...string) *testServer {
	t.Helper()
	cfg := testConfig(t, append([]string{"-redis-prefix", prefix}, args...)...)
	cfg.RedisURL = redisURL
	return startServer(t, cfg)
}

// startCluster starts n nodes on the Redis (or Redis Cluster) of
// redisURL and waits until they are ready.
func startCluster(t *testing.T, redisURL string, n int) []*testServer {
	t.Helper()
	prefix := testutil.Prefix(t)
	var nodes []*testServer
	for range n {
		nodes = append(nodes, startNode(t, redisURL, prefix))
	}
	for _, ts := range nodes {
		waitReady(t, ts)
	}
	return nodes
}

func waitReady(t *testing.T, ts *testServer) {
	t.Helper()
	waitFor(t, "node ready", func() bool { code, _ := ts.readyz(); return code == http.StatusOK })
}

// dialSubscribed connects uid to ts and waits until ts and the other
// nodes see it through Redis: a uid is online once its node's
// subscription is in place.
func dialSubscribed(t *testing.T, ts *testServer, uid string, others ...*testServer) *websocket.Conn {
	t.Helper()
	conn := ts.dial(uid)
	for _, o := range append(others, ts) {
		waitFor(t, uid+" visible from another node", func() bool {
			online, _, err := o.broker.Online(context.Background(), []string{uid})
			return err == nil && len(online) == 1
		})
	}
	return conn
}

func TestClusterCrossNodeDelivery(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		conn := dialSubscribed(t, a, "alice", b)

		id := b.sendOK("alice", "from b")
		if got := readText(t, conn); got != "from b" {
			t.Fatalf("got %q, want %q", got, "from b")
		}
		if len(id) != 20 {
			t.Errorf("id %q", id)
		}
		// Sent through a, whose own copy comes back from Redis: still once.
		a.sendOK("alice", "from a")
		if got := readText(t, conn); got != "from a" {
			t.Fatalf("got %q, want %q", got, "from a")
		}
		assertNothingPushed(t, b, conn, "alice")

		for _, ts := range nodes {
			if code, body := ts.send("application/x-www-form-urlencoded", "uid=nobody&message=x"); code != http.StatusNotFound || body != "client not found: nobody\n" {
				t.Errorf("send to an offline uid = %d %q, want 404", code, body)
			}
		}
		if got := b.metric("pusher_redis_published_total"); got < 2 {
			t.Errorf("pusher_redis_published_total on b = %v, want at least 2", got)
		}
		if got := a.metric("pusher_redis_received_total"); got < 2 {
			t.Errorf("pusher_redis_received_total on a = %v, want at least 2", got)
		}
	})
}

// TestClusterUIDOnSeveralNodes: every connection of a uid, on any node,
// gets each message exactly once, in /send order, whichever node accepts.
func TestClusterUIDOnSeveralNodes(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 3)
		a, b, c := nodes[0], nodes[1], nodes[2]
		onA := dialSubscribed(t, a, "u", b, c)
		onB := dialSubscribed(t, b, "u", a, c)
		onB2 := b.dial("u")

		const n = 60
		for i := range n {
			nodes[i%3].sendOK("u", fmt.Sprintf("m%d", i))
		}
		for ci, conn := range []*websocket.Conn{onA, onB, onB2} {
			for i := range n {
				if got, want := readText(t, conn), fmt.Sprintf("m%d", i); got != want {
					t.Fatalf("connection %d: message %d = %q, want %q", ci, i, got, want)
				}
			}
		}
		assertNothingPushed(t, c, onA, "u")
	})
}

func TestClusterMulticast(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		c1 := dialSubscribed(t, a, "u1", b)
		c2 := dialSubscribed(t, b, "u2", a)
		code, body := a.sendJSON(map[string]any{"uids": []string{"u1", "u2", "u3"}, "message": "all"})
		if code != http.StatusOK || !strings.Contains(body, `"sent":["u1","u2"]`) || !strings.Contains(body, `"not_found":["u3"]`) {
			t.Fatalf("multicast = %d %q", code, body)
		}
		for _, c := range []*websocket.Conn{c1, c2} {
			if got := readText(t, c); got != "all" {
				t.Errorf("got %q", got)
			}
		}
		logs := a.msgLog.logged()
		if len(logs) != 1 || fmt.Sprint(logs[0].UIDs) != "[u1 u2]" {
			t.Errorf("accepting node logged %+v, want one log for [u1 u2]", logs)
		}
		if n := len(b.msgLog.logged()); n != 0 {
			t.Errorf("the other node logged %d messages; only the accepting node logs", n)
		}
		// Delivery status comes from the node that wrote to the socket.
		waitFor(t, "u2 delivered on b", func() bool { s, _ := b.msgLog.status(logs[0].ID, "u2"); return s == 1 })
	})
}

// TestClusterRedisOutage: Redis unreachable makes /send 503 and /readyz
// 503 while WebSocket connections stay open; when Redis is back the node
// resubscribes by itself and delivery works again on the same connection.
func TestClusterRedisOutage(t *testing.T) {
	for _, mode := range []struct {
		name string
		mode testutil.ProxyMode
	}{{"cut", testutil.Cut}, {"blackhole", testutil.Blackhole}} {
		t.Run(mode.name, func(t *testing.T) { testClusterRedisOutage(t, mode.mode) })
	}
}

func testClusterRedisOutage(t *testing.T, mode testutil.ProxyMode) {
	u, prefix := testutil.Redis(t), testutil.Prefix(t)
	proxy := testutil.StartProxy(t, u.Host)
	a := startNode(t, testutil.Via(u, proxy.Addr()), prefix)
	b := startNode(t, testutil.Via(u, proxy.Addr()), prefix)
	waitReady(t, a)
	waitReady(t, b)
	conn := dialSubscribed(t, a, "alice", b)
	b.sendOK("alice", "before")
	if got := readText(t, conn); got != "before" {
		t.Fatalf("got %q", got)
	}

	proxy.SetMode(mode)
	for _, ts := range []*testServer{a, b} {
		waitFor(t, "/readyz 503 during the outage", func() bool {
			code, _ := ts.readyz()
			return code == http.StatusServiceUnavailable && strings.Contains(ts.logBuf.String(), `msg="not ready" reason="cluster: `)
		})
		start := time.Now()
		code, body := ts.send("application/x-www-form-urlencoded", "uid=alice&message=during")
		if code != http.StatusServiceUnavailable || body != "cluster unavailable: the message was not sent\n" {
			t.Errorf("send during the outage = %d %q, want 503", code, body)
		}
		t.Logf("send during the outage took %s", time.Since(start))
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("send during the outage took %s", d)
		}
	}
	if n := a.hub.Connections(); n != 1 {
		t.Fatalf("connections on a = %d during the outage, want 1", n)
	}

	proxy.SetMode(testutil.Forward)
	for _, ts := range []*testServer{a, b} {
		waitReady(t, ts)
	}
	waitFor(t, "alice visible from b again", func() bool {
		online, _, err := b.broker.Online(context.Background(), []string{"alice"})
		return err == nil && len(online) == 1
	})
	b.sendOK("alice", "after")
	if got := readText(t, conn); got != "after" {
		t.Fatalf("got %q after the outage, want %q (nothing from during it)", got, "after")
	}
	if got := a.metric("pusher_redis_reconnects_total"); got < 1 {
		t.Errorf("pusher_redis_reconnects_total = %v, want at least 1", got)
	}
}

// TestClusterGracefulShutdownLeavesCluster: a node that shuts down stops
// being counted at once; its users' connections got 1001.
func TestClusterGracefulShutdownLeavesCluster(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		conn := dialSubscribed(t, a, "only-a", b)
		if err := a.stop(); err != nil {
			t.Fatal(err)
		}
		wantClose(t, conn, websocket.CloseGoingAway, "server shutting down")
		if code, _ := b.send("application/x-www-form-urlencoded", "uid=only-a&message=x"); code != http.StatusNotFound {
			t.Errorf("send to a uid of a stopped node = %d, want 404", code)
		}
	})
}

func TestClusterRedisUnreachableAtStart(t *testing.T) {
	cfg := testConfig(t)
	cfg.RedisURL = "redis://:s3cret@127.0.0.1:1/0"
	_, err := newServer(cfg, slog.New(slog.DiscardHandler), newRecordingLogger())
	if err == nil || !strings.Contains(err.Error(), "PUSHER_REDIS_URL") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("newServer with Redis down = %v, want an error naming PUSHER_REDIS_URL without the password", err)
	}
}

// TestClusterNodeKilled: three processes; one is killed with SIGKILL while
// the others go on. Redis drops its subscriptions with its connections;
// its uids answer 503 (the dead node may be resubscribing) until it is
// forgotten, then 404, and the others' uids are not disturbed.
func TestClusterNodeKilled(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		prefix := testutil.Prefix(t)
		bin := buildBinary(t)
		env := []string{"PUSHER_REDIS_URL=" + be.URL, "PUSHER_REDIS_PREFIX=" + prefix, "PUSHER_MESSAGE_LOG=none"}
		var procs []*process
		for range 3 {
			procs = append(procs, startBinary(t, bin, nil, env...))
		}
		dial := func(p *process, uid string) *websocket.Conn { return dialProcess(t, p, uid) }
		client := &http.Client{Timeout: 10 * time.Second}
		defer client.CloseIdleConnections()
		get := func(p *process, path string) string {
			req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr+path, nil)
			req.Header.Set("Authorization", "Bearer "+testAPIKey)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var sb strings.Builder
			_, _ = io.Copy(&sb, resp.Body)
			return sb.String()
		}
		send := func(p *process, uid, msg string) int {
			req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/send", strings.NewReader(url.Values{"uid": {uid}, "message": {msg}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", "Bearer "+testAPIKey)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		a, b, c := procs[0], procs[1], procs[2]
		onA := dial(a, "u1")
		dial(c, "u1")
		dial(c, "u2")
		waitFor(t, "u1 and u2 subscribed, and b knowing c", func() bool {
			return strings.Contains(get(a, "/metrics"), "pusher_redis_subscriptions 1") && strings.Contains(get(c, "/metrics"), "pusher_redis_subscriptions 2") &&
				strings.Contains(get(b, "/metrics"), "pusher_cluster_nodes 3")
		})

		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = c.wait(t) // "signal: killed": the exit itself is what the test waits for
		// 503 while the dead node is still registered (it beat within the
		// last second), 404 once it is forgotten.
		deadline := time.Now().Add(cluster.NodeDeadAfter + 5*time.Second)
		if code := send(b, "u2", "x"); code != http.StatusServiceUnavailable {
			t.Errorf("send to a uid of the node just killed = %d, want 503 (it may be resubscribing)", code)
		}
		for code := send(b, "u2", "x"); code != http.StatusNotFound; code = send(b, "u2", "x") {
			if code != http.StatusServiceUnavailable {
				t.Fatalf("send to a uid of the killed node = %d, want 503 and then 404", code)
			}
			if time.Now().After(deadline) {
				t.Fatalf("u2 still 503 %s after the kill", cluster.NodeDeadAfter+5*time.Second)
			}
			time.Sleep(50 * time.Millisecond) // a backend's retry interval
		}
		if code := send(b, "u1", "still here"); code != http.StatusOK {
			t.Fatalf("send to u1 via b = %d, want 200", code)
		}
		if got := readText(t, onA); got != "still here" {
			t.Fatalf("got %q", got)
		}
	})
}

// TestClusterConcurrentSendsExactlyOnce: many senders on every node, two
// connections of each uid on different nodes; each gets every message
// once and each sender's messages in order.
func TestClusterConcurrentSendsExactlyOnce(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 3)
		const users, perSender = 4, 40
		type recv struct {
			conn *websocket.Conn
			uid  string
		}
		var conns []recv
		for i := range users {
			uid := fmt.Sprintf("c%d", i)
			conns = append(conns,
				recv{dialSubscribed(t, nodes[i%3], uid, nodes...), uid},
				recv{dialSubscribed(t, nodes[(i+1)%3], uid, nodes...), uid})
		}
		var wg sync.WaitGroup
		for s, ts := range nodes {
			wg.Go(func() {
				for i := range perSender {
					for u := range users {
						ts.sendOK(fmt.Sprintf("c%d", u), fmt.Sprintf("s%d:%d", s, i))
					}
				}
			})
		}
		wg.Wait()
		for _, r := range conns {
			next := map[string]int{}
			for range 3 * perSender {
				var sender string
				var seq int
				if _, err := fmt.Sscanf(strings.Replace(readText(t, r.conn), ":", " ", 1), "%s %d", &sender, &seq); err != nil {
					t.Fatal(err)
				}
				if seq != next[sender] {
					t.Fatalf("%s: from %s got %d, want %d", r.uid, sender, seq, next[sender])
				}
				next[sender]++
			}
		}
	})
}

// TestClusterPublishAfterScriptFlush: Redis forgot the publish script (a
// restart, SCRIPT FLUSH); the publish loads it again and every uid gets
// the message once.
func TestClusterPublishAfterScriptFlush(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		c1 := dialSubscribed(t, a, "f1", b)
		c2 := dialSubscribed(t, a, "f2", b)
		addrs := []string{testutil.Redis(t).Host}
		if be.Name == "cluster" {
			addrs = redisCluster.Get(t).Addrs()
		}
		for _, addr := range addrs {
			rdb := redis.NewClient(&redis.Options{Addr: addr})
			err := rdb.ScriptFlush(context.Background()).Err()
			rdb.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		code, body := b.sendJSON(map[string]any{"uids": []string{"f1", "f2"}, "message": "after flush"})
		if code != http.StatusOK {
			t.Fatalf("send = %d %q", code, body)
		}
		for _, c := range []*websocket.Conn{c1, c2} {
			if got := readText(t, c); got != "after flush" {
				t.Fatalf("got %q", got)
			}
			assertNothingPushed(t, a, c, map[*websocket.Conn]string{c1: "f1", c2: "f2"}[c])
		}
	})
}

// Every line the binary writes to stderr is one structured record, go-redis's
// own complaints about a lost Redis included (go-redis prints plain lines
// through a logger of its own unless it is given ours).
func TestBinaryLogsRedisOutageStructured(t *testing.T) {
	u, prefix := testutil.Redis(t), testutil.Prefix(t)
	proxy := testutil.StartProxy(t, u.Host)
	p := startBinary(t, buildBinary(t), nil, "PUSHER_REDIS_URL="+testutil.Via(u, proxy.Addr()), "PUSHER_REDIS_PREFIX="+prefix, "PUSHER_MESSAGE_LOG=none")
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
	for line := range strings.SplitSeq(strings.TrimSpace(p.stderr.String()), "\n") {
		if !strings.HasPrefix(line, "time=") || !strings.Contains(line, " level=") {
			t.Errorf("stderr line is not a structured record: %q", line)
		}
	}
}
