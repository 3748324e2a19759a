package main

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
	"go-pusher/message"
)

// TestSendWithoutMessageLog: with -message-log none /send asks nobody
// who is online before it publishes (the publish finds out), and answers
// exactly as with a log: 200 to a connected uid, 404 to one that is not,
// a multicast's not_found, a 404 that leaves its idempotency key free. On
// one node and in cluster mode, on a single Redis and a Redis Cluster.
func TestSendWithoutMessageLog(t *testing.T) {
	check := func(t *testing.T, sender, holder *testServer) {
		dial := func(uid string) *websocket.Conn {
			if holder == sender {
				return holder.dial(uid)
			}
			return dialSubscribed(t, holder, uid, sender)
		}
		conn := dial("on")
		sender.sendOK("on", "hello")
		if got := readText(t, conn); got != "hello" {
			t.Fatalf("got %q, want hello", got)
		}
		if code, body := sender.send("application/x-www-form-urlencoded", "uid=off&message=x"); code != http.StatusNotFound || body != "client not found: off\n" {
			t.Errorf("unicast to an offline uid = %d %q, want 404", code, body)
		}
		code, body := sender.sendJSON(map[string]any{"uids": []string{"off", "on"}, "message": "mc"})
		if code != http.StatusOK || !strings.Contains(body, `"sent":["on"]`) || !strings.Contains(body, `"not_found":["off"]`) {
			t.Errorf("multicast = %d %q, want on sent and off not found", code, body)
		}
		if got := readText(t, conn); got != "mc" {
			t.Errorf("got %q, want mc", got)
		}
		code, body = sender.sendJSON(map[string]any{"uids": []string{"off", "off2"}, "message": "nobody"})
		if code != http.StatusOK || !strings.Contains(body, `"id":"`) || !strings.Contains(body, `"sent":[]`) || !strings.Contains(body, `"not_found":["off","off2"]`) {
			t.Errorf("multicast to nobody online = %d %q, want a 200 with an id and both not found", code, body)
		}
		if code, _, _ := sender.sendKey("k1", "later", "m"); code != http.StatusNotFound {
			t.Errorf("keyed unicast to an offline uid = %d, want 404", code)
		}
		later := dial("later")
		if code, _, body := sender.sendKey("k1", "later", "m"); code != http.StatusOK {
			t.Errorf("the same key once later is online = %d %q, want 200", code, body)
		}
		if got := readText(t, later); got != "m" {
			t.Errorf("got %q, want m (the 404 did not keep the key)", got)
		}
		assertNothingPushed(t, sender, conn, "on")
	}
	t.Run("one node", func(t *testing.T) {
		ts := startServerLog(t, testConfig(t), message.NoneLogger{})
		check(t, ts, ts)
	})
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		prefix := testutil.Prefix(t)
		var nodes []*testServer
		for range 2 {
			cfg := testConfig(t, "-redis-prefix", prefix)
			cfg.RedisURL = be.URL
			nodes = append(nodes, startServerLog(t, cfg, message.NoneLogger{}))
		}
		for _, ts := range nodes {
			waitReady(t, ts)
		}
		check(t, nodes[1], nodes[0])
	})
}

// onlineCounter counts the lookups a broker is asked.
type onlineCounter struct {
	Broker
	n *atomic.Int64
}

func (c onlineCounter) Online(ctx context.Context, uids []string) ([]string, []string, error) {
	c.n.Add(1)
	return c.Broker.Online(ctx, uids)
}

// TestNoLookupWithoutMessageLog: without a message log a /send asks the
// broker nothing before it publishes; with one, it asks once.
func TestNoLookupWithoutMessageLog(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  message.Logger
		want int64
	}{{"none", message.NoneLogger{}, 0}, {"a log", newRecordingLogger(), 1}} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			ts := startServerHooked(t, testConfig(t), tc.log, func(s *Server) { s.broker = onlineCounter{s.broker, &n} })
			conn := ts.dial("u")
			ts.sendOK("u", "m")
			if got := readText(t, conn); got != "m" {
				t.Fatalf("got %q", got)
			}
			if got := n.Load(); got != tc.want {
				t.Errorf("a /send asked the broker %d times who is online, want %d", got, tc.want)
			}
		})
	}
}
