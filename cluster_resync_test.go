package main

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/cluster"
	"go-pusher/internal/testutil"
	"go-pusher/message"
)

// TestClusterNo404WhileResubscribing: while a node is cut from Redis and
// until it has subscribed its uids again, another node does not answer
// 404 for them ("nobody will get this") but 503, which backends retry;
// once it is back, the message goes out. A node that leaves on purpose
// does not make offline uids uncertain.
func TestClusterNo404WhileResubscribing(t *testing.T) {
	u, prefix := testutil.Redis(t), testutil.Prefix(t)
	proxy := testutil.StartProxy(t, u.Host)
	a := startNode(t, testutil.Via(u, proxy.Addr()), prefix) // cut below
	b := startNode(t, u.String(), prefix)
	waitReady(t, a)
	waitReady(t, b)
	conn := dialSubscribed(t, a, "alice", b)
	send := func(uid string) (int, string) {
		return b.send("application/x-www-form-urlencoded", "uid="+uid+"&message=m")
	}
	if code, body := send("nobody"); code != http.StatusNotFound {
		t.Fatalf("send to an offline uid with every node up = %d %q, want 404", code, body)
	}
	// A Redis restart that lost the registry: the nodes register again
	// within a beat.
	rdb := redis.NewClient(&redis.Options{Addr: u.Host})
	defer rdb.Close()
	nodes := prefix + ":nodes"
	ctx := context.Background()
	rdb.Del(ctx, nodes)
	waitFor(t, "both nodes registered again", func() bool { return rdb.HLen(ctx, nodes).Val() == 2 })

	proxy.SetMode(testutil.Cut)
	waitFor(t, "a to lose Redis", func() bool { code, _ := a.readyz(); return code == http.StatusServiceUnavailable })
	for _, uid := range []string{"alice", "nobody"} {
		if code, body := send(uid); code != http.StatusServiceUnavailable || body != "cluster resubscribing after a Redis outage: the message was not sent; retry\n" {
			t.Errorf("send to %s while a is cut = %d %q, want 503 (alice may be connected there)", uid, code, body)
		}
	}

	proxy.SetMode(testutil.Forward)
	waitFor(t, "a send to alice through b", func() bool {
		code, body := send("alice")
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Fatalf("send to alice while a resubscribes = %d %q, want 503 or 200", code, body)
		}
		return code == http.StatusOK
	})
	if got := readText(t, conn); got != "m" {
		t.Fatalf("alice got %q, want m", got)
	}
	waitFor(t, "404 again for an offline uid", func() bool { code, _ := send("nobody"); return code == http.StatusNotFound })

	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	// Its beats stopped before it unregistered: none can bring it back.
	if n := rdb.HLen(ctx, nodes).Val(); n != 1 {
		t.Errorf("%d nodes registered after a left, want 1", n)
	}
	if code, body := send("nobody"); code != http.StatusNotFound {
		t.Errorf("send to an offline uid after a left = %d %q, want 404 at once", code, body)
	}
}

// unsureBroker publishes nothing and reports every uid unsure, as the
// cluster's publish does for a uid without a subscriber while a node
// resubscribes.
type unsureBroker struct{ Broker }

func (unsureBroker) PublishAll(_ context.Context, pubs []*cluster.Publication) error {
	for _, p := range pubs {
		p.Unsure = p.UIDs
	}
	return nil
}

// TestUnsureAtPublish: a unicast whose uid turned unsure between the
// lookup and the publish is a 503 (a batch item's result too); a
// multicast lists it as not found; its log row says failed.
func TestUnsureAtPublish(t *testing.T) {
	ts := startServerWith(t, testConfig(t), func(s *Server) { s.broker = unsureBroker{s.broker} })
	ts.dial("u")
	if code, body := ts.send("application/x-www-form-urlencoded", "uid=u&message=m"); code != http.StatusServiceUnavailable || body != resyncingReason+"\n" {
		t.Errorf("send = %d %q, want 503 %q", code, body, resyncingReason)
	}
	res := ts.batch(unicastItem("u", "a"), map[string]any{"uids": []string{"u"}, "message": "b"})
	if res[0].Status != http.StatusServiceUnavailable || res[0].Error != resyncingReason {
		t.Errorf("unicast item = %+v, want status 503", res[0])
	}
	if res[1].ID == "" || len(res[1].Sent) != 0 || fmt.Sprint(res[1].NotFound) != "[u]" {
		t.Errorf("multicast item = %+v, want u not found", res[1])
	}
	for _, l := range ts.msgLog.logged() {
		if st, ok := ts.msgLog.status(l.ID, "u"); !ok || st != message.StatusFailed {
			t.Errorf("row of %s: %v (%v), want failed", l.ID, st, ok)
		}
	}
}
