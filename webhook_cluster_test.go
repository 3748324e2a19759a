package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"go-pusher/internal/testutil"
)

// startWebhookCluster starts n nodes on redisURL that send presence
// events to url.
func startWebhookCluster(t *testing.T, redisURL, url string, n int) []*testServer {
	t.Helper()
	urls := make([]string, n)
	for i := range urls {
		urls[i] = url
	}
	return startWebhookNodes(t, redisURL, urls...)
}

// startWebhookNodes starts a node on redisURL for each url, that sends
// presence events there.
func startWebhookNodes(t *testing.T, redisURL string, urls ...string) []*testServer {
	t.Helper()
	prefix := testutil.Prefix(t)
	var nodes []*testServer
	for _, url := range urls {
		cfg, err := parseConfig([]string{
			"-addr", "127.0.0.1:0", "-message-log", "none", "-redis-prefix", prefix,
			"-webhook-url", url, "-webhook-offline-delay", "400ms",
		},
			testEnv(map[string]string{"PUSHER_WEBHOOK_SECRET": testWebhookSecret}))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RedisURL = redisURL
		nodes = append(nodes, startServer(t, cfg))
	}
	for _, ts := range nodes {
		waitReady(t, ts)
	}
	return nodes
}

// TestClusterWebhookOnce: a uid connected on two nodes is one online and,
// once both connections closed, one offline, each sent by one node; a
// reload onto the other node within the delay sends nothing. On a single
// Redis and on a Redis Cluster.
func TestClusterWebhookOnce(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		rcv := startReceiver(t)
		nodes := startWebhookCluster(t, be.URL, rcv.URL, 2)
		a, b := nodes[0], nodes[1]
		ca := a.dial("zoe")
		cb := b.dial("zoe")
		waitFor(t, "online zoe", func() bool { return len(rcv.got()) == 1 })
		ca.Close()
		waitFor(t, "zoe gone from a", func() bool { return len(a.hub.clients("zoe")) == 0 })
		cb.Close()
		waitFor(t, "zoe gone from b", func() bool { return len(b.hub.clients("zoe")) == 0 })
		cc := a.dial("zoe") // back within the delay, on the other node
		// Past the delay (and a beat): the point of the test.
		time.Sleep(2 * time.Second)
		if got := rcv.got(); len(got) != 1 {
			t.Errorf("a reload within the delay sent %v", got)
		}
		cc.Close()
		waitFor(t, "offline zoe", func() bool { return len(rcv.got()) == 2 })
		time.Sleep(1500 * time.Millisecond) // a second node's duplicate would come within a beat
		if got := strings.Join(rcv.got(), ","); got != "online zoe,offline zoe" {
			t.Errorf("events %s, want one online and one offline", got)
		}
		rcv.check()
	})
}

// TestClusterWebhookNodeKilled: the uids of a node killed with SIGKILL go
// offline, sent by a node that stays, within 30 s; a uid also connected
// elsewhere stays online. The node dies before it hears that its online
// of the uid was delivered: the offline does not wait for it.
func TestClusterWebhookNodeKilled(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		rcv := startReceiver(t)
		prefix := testutil.Prefix(t)
		bin := buildBinary(t)
		env := []string{
			"PUSHER_REDIS_URL=" + be.URL, "PUSHER_REDIS_PREFIX=" + prefix, "PUSHER_MESSAGE_LOG=none",
			"PUSHER_WEBHOOK_URL=" + rcv.URL, "PUSHER_WEBHOOK_SECRET=" + testWebhookSecret, "PUSHER_WEBHOOK_OFFLINE_DELAY=300ms",
		}
		stay, doomed := startBinary(t, bin, nil, env...), startBinary(t, bin, nil, env...)
		dial := func(p *process, uid string) *websocket.Conn { return dialProcess(t, p, uid) }
		killed := make(chan struct{})
		var kill sync.Once
		t.Cleanup(func() { kill.Do(func() { close(killed) }) }) // a failed test's held answer too
		rcv.holdAnswers(func(body []byte) <-chan struct{} {
			if strings.Contains(string(body), `"uid":"kim"`) {
				return killed // the answer to kim's online reaches a dead node
			}
			return nil
		})
		dial(doomed, "kim")
		dial(doomed, "lee")
		dial(stay, "lee")
		waitFor(t, "online kim and lee", func() bool { return len(rcv.got()) == 2 })
		if err := doomed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = doomed.wait(t)
		kill.Do(func() { close(killed) })
		start := time.Now()
		deadline := start.Add(30 * time.Second)
		for !strings.Contains(strings.Join(rcv.got(), ","), "offline kim") {
			if time.Now().After(deadline) {
				t.Fatalf("no offline for kim within 30 s of the kill: %v", rcv.got())
			}
			time.Sleep(100 * time.Millisecond) // polling a receiver the test does not drive
		}
		t.Logf("offline kim %s after the kill", time.Since(start).Round(time.Millisecond))
		if got := strings.Join(rcv.got(), ","); strings.Contains(got, "offline lee") {
			t.Errorf("lee is still connected on the other node, yet: %s", got)
		}
		rcv.check()
	})
}

// TestClusterWebhookGracefulStop: a node that stops (SIGTERM) tells Redis
// that its users left before it leaves the cluster; a node that stays
// sends their offline. On a single Redis and on a Redis Cluster.
func TestClusterWebhookGracefulStop(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		rcv := startReceiver(t)
		nodes := startWebhookCluster(t, be.URL, rcv.URL, 2)
		nodes[0].dial("max")
		waitFor(t, "online max", func() bool { return len(rcv.got()) == 1 })
		if err := nodes[0].stop(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "offline max, from the node that stayed", func() bool { return len(rcv.got()) == 2 })
		if got := strings.Join(rcv.got(), ","); got != "online max,offline max" {
			t.Errorf("events %s", got)
		}
	})
}

// TestClusterWebhookOrderAcrossNodes: a uid's events sent by two nodes
// reach the receiver in order. Node a sends the online and its receiver
// fails; node b, where the uid comes back after its offline, holds its
// events back until a's online went out, then sends them. On a single
// Redis and on a Redis Cluster.
func TestClusterWebhookOrderAcrossNodes(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		rcv := startReceiver(t)
		var failA atomic.Bool
		var triedA atomic.Int32
		failA.Store(true)
		gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if failA.Load() && r.URL.Path == "/a" {
				triedA.Add(1)
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			rcv.serve(w, r)
		}))
		t.Cleanup(gate.Close)
		nodes := startWebhookNodes(t, be.URL, gate.URL+"/a", gate.URL+"/b")
		a, b := nodes[0], nodes[1]
		conn := a.dial("zed") // online, event 1: a's, failing
		// Its batch is out (and retrying) before the offline can join it.
		waitFor(t, "a's first try", func() bool { return triedA.Load() >= 1 })
		conn.Close()
		waitFor(t, "zed gone from a", func() bool { return len(a.hub.clients("zed")) == 0 })
		// The offline, event 2, is due 400 ms later, and sent by the node
		// whose beat expires it: a queues it behind its failing online,
		// b holds it back.
		waiting := func() float64 {
			return a.metric("pusher_webhook_events_queued") + b.metric("pusher_webhook_events_held")
		}
		waitFor(t, "zed's offline decided", func() bool { return waiting() >= 1 })
		b.dial("zed") // back, on b: event 3, b's, held back too
		waitFor(t, "b holds zed's online back", func() bool { return waiting() >= 2 })
		if got := rcv.got(); len(got) != 0 {
			t.Fatalf("the receiver got %v while a's online was failing, want nothing yet", got)
		}
		failA.Store(false)
		waitFor(t, "three events", func() bool { return len(rcv.got()) == 3 })
		if got := strings.Join(rcv.got(), ","); got != "online zed,offline zed,online zed" {
			t.Errorf("events %s, want online, offline, online", got)
		}
		rcv.check()
	})
}

// TestClusterWebhookAfterRedisForgets: Redis loses its data (a restart
// without persistence). The node finds it is no longer registered and
// records its connected users' presence again: the online is sent again
// (what Redis forgot cannot say it went out), and the offline, when the
// user leaves, is not lost.
func TestClusterWebhookAfterRedisForgets(t *testing.T) {
	u := testutil.Redis(t)
	rcv := startReceiver(t)
	node := startWebhookNodes(t, u.String(), rcv.URL)[0]
	conn := node.dial("una")
	waitFor(t, "online una", func() bool { return len(rcv.got()) == 1 })

	rdb := redis.NewClient(&redis.Options{Addr: u.Host})
	defer rdb.Close()
	keys, err := rdb.Keys(t.Context(), node.cfg.RedisPrefix+":*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys of the node's prefix: %v, %v", keys, err)
	}
	if err := rdb.Del(t.Context(), keys...).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "una recorded again", func() bool { return len(rcv.got()) == 2 })
	conn.Close()
	waitFor(t, "offline una", func() bool { return len(rcv.got()) == 3 })
	if got := strings.Join(rcv.got(), ","); got != "online una,online una,offline una" {
		t.Errorf("events %s, want online, online again, offline", got)
	}
	rcv.check()
}

// TestClusterWebhookStopMarksDelivered: a node stops while its online of
// a uid is still being retried. It delivers it at shutdown and marks it
// delivered in Redis before it lets Redis go, so the uid's offline, sent
// by the node that stays, does not wait out the hold for it.
func TestClusterWebhookStopMarksDelivered(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		rcv := startReceiver(t)
		rcv.mu.Lock()
		rcv.fail = 1
		rcv.mu.Unlock()
		nodes := startWebhookCluster(t, be.URL, rcv.URL, 2)
		nodes[0].dial("mia")
		waitFor(t, "the online's first try refused", func() bool {
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			return rcv.fail == 0
		})
		if err := nodes[0].stop(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "online and offline mia", func() bool { return len(rcv.got()) == 2 })
		if got := strings.Join(rcv.got(), ","); got != "online mia,offline mia" {
			t.Errorf("events %s", got)
		}
	})
}
