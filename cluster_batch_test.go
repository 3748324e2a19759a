package main

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"go-pusher/internal/testutil"
)

// TestClusterBatch: a batch sent to one node reaches uids on every node,
// in item order, and is answered per item as on a single node.
func TestClusterBatch(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		alice := dialSubscribed(t, a, "alice", b)
		bob := dialSubscribed(t, b, "bob", a)
		var items []map[string]any
		for i := range 20 {
			items = append(items, unicastItem("alice", fmt.Sprint("a", i)))
			if i%5 == 0 {
				items = append(items, map[string]any{"uids": []string{"alice", "bob", "nobody"}, "message": fmt.Sprint("m", i)})
			}
		}
		items = append(items, unicastItem("nobody", "lost"))
		res := b.batch(items...)
		for i, it := range items {
			r := res[i]
			switch {
			case it["uid"] == "nobody":
				if r.Status != http.StatusNotFound {
					t.Errorf("result %d = %+v, want 404", i, r)
				}
			case it["uids"] != nil:
				if fmt.Sprint(r.Sent, r.NotFound) != "[alice bob] [nobody]" {
					t.Errorf("result %d = %+v, want sent to alice and bob", i, r)
				}
			default:
				if len(r.ID) != 20 {
					t.Errorf("result %d = %+v, want an id", i, r)
				}
			}
		}
		for _, it := range items {
			if it["uid"] == "nobody" {
				continue
			}
			if got := readText(t, alice); got != it["message"] {
				t.Fatalf("alice got %q, want %q (item order)", got, it["message"])
			}
			if it["uids"] != nil {
				if got := readText(t, bob); got != it["message"] {
					t.Fatalf("bob got %q, want %q", got, it["message"])
				}
			}
		}
		if n := b.msgLog.logCalls(); n != 1 {
			t.Errorf("the batch took %d message log writes, want 1", n)
		}
	})
}

// TestClusterIdempotencyRace: nodes racing on one key never both send it.
// Each key is sent by four senders at once, two on each node; its message
// goes out once, every 200 carries the same id, and the others are 409s.
func TestClusterIdempotencyRace(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		conn := dialSubscribed(t, nodes[0], "u", nodes[1])
		const keys = 20
		for k := range keys {
			key := fmt.Sprint("race-", k)
			var wg sync.WaitGroup
			var mu sync.Mutex
			ids := map[string]int{}
			for s := range 4 {
				ts := nodes[s%2]
				wg.Go(func() {
					code, _, body := ts.sendKey(key, "u", key)
					mu.Lock()
					defer mu.Unlock()
					switch code {
					case http.StatusOK:
						ids[body]++
					case http.StatusConflict:
					default:
						t.Errorf("%s: send = %d %q, want 200 or 409", key, code, body)
					}
				})
			}
			wg.Wait()
			if len(ids) != 1 {
				t.Fatalf("%s: answers %v, want one id", key, ids)
			}
			if got := readText(t, conn); got != key {
				t.Fatalf("got %q, want %s", got, key)
			}
			// Finished now: both nodes replay it.
			for _, ts := range nodes {
				if code, h, body := ts.sendKey(key, "u", key); code != http.StatusOK || h.Get("Idempotent-Replayed") != "true" || ids[body] == 0 {
					t.Errorf("%s: retry = %d %q (replayed %q), want the first answer replayed", key, code, body, h.Get("Idempotent-Replayed"))
				}
			}
		}
		assertNothingPushed(t, nodes[1], conn, "u")
	})
}

// TestClusterIdempotencyAcrossNodes: a key answered on one node is known on
// the others, in /send and in batches alike.
func TestClusterIdempotencyAcrossNodes(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		conn := dialSubscribed(t, a, "u", b)
		_, _, first := a.sendKey("k", "u", "once")
		if got := readText(t, conn); got != "once" {
			t.Fatalf("got %q, want once", got)
		}
		if code, h, body := b.sendKey("k", "u", "once"); code != http.StatusOK || body != first || h.Get("Idempotent-Replayed") != "true" {
			t.Errorf("retry on the other node = %d %q, want %q replayed", code, body, first)
		}
		if code, _, body := b.sendKey("k", "u", "twice"); code != http.StatusUnprocessableEntity {
			t.Errorf("other request on the other node = %d %q, want 422", code, body)
		}
		res := b.batch(
			map[string]any{"uid": "u", "message": "once", "idempotency_key": "k"},
			map[string]any{"uids": []string{"u"}, "message": "multi", "idempotency_key": "m"},
		)
		if !res[0].Replayed || res[0].ID == "" {
			t.Errorf("batch item with the key = %+v, want replayed", res[0])
		}
		if got := readText(t, conn); got != "multi" {
			t.Fatalf("got %q, want multi", got)
		}
		again := a.batch(map[string]any{"uids": []string{"u"}, "message": "multi", "idempotency_key": "m"})
		if !again[0].Replayed || again[0].ID != res[1].ID || fmt.Sprint(again[0].Sent) != "[u]" {
			t.Errorf("multicast retry on the other node = %+v, want %+v replayed", again[0], res[1])
		}
		assertNothingPushed(t, a, conn, "u")
	})
}
