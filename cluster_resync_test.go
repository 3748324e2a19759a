package main

import (
	"net/http"
	"testing"

	"go-pusher/internal/testutil"
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
	if code, body := send("nobody"); code != http.StatusNotFound {
		t.Errorf("send to an offline uid after a left = %d %q, want 404 at once", code, body)
	}
}
