package main

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

// TestRedisClusterFailover: the master of a uid's slot is killed; its
// replica takes over. Until it has, /send answers 503 (never 404: the
// uid is connected), and then recovers by itself: the uid's connection,
// on another node than the sender, gets every acknowledged message once,
// at offsets that go on from before the failover without a gap (the
// publishes waited for the replica), and a since= from before the
// failover replays from the new master.
func TestRedisClusterFailover(t *testing.T) {
	c := testutil.StartRedisCluster(t)
	prefix := testutil.Prefix(t)
	a := startNode(t, c.URL(), prefix)
	b := startNode(t, c.URL(), prefix)
	waitReady(t, a)
	waitReady(t, b)
	const uid = "failover"
	conn := a.dialStream(uid, "format=json")
	b.sendWhenOnline(uid, "m1")
	first := readFrame(t, conn).pos(t)
	for i := 2; i <= 5; i++ {
		b.sendOK(uid, fmt.Sprint("m", i))
	}
	for i := 2; i <= 5; i++ {
		wantMessage(t, conn, fmt.Sprint("m", i), stream.Position{Epoch: first.Epoch, N: uint64(i)})
	}

	master := c.MasterOf(t, "{"+uid+"}") // the hash tag of its keys and channel
	c.Kill(t, master)
	statuses := map[int]int{}
	start := time.Now()
	var during string
	for i := 0; ; i++ {
		msg := fmt.Sprint("during", i)
		code, body := b.send("application/x-www-form-urlencoded", "uid="+uid+"&message="+msg)
		statuses[code]++
		if code == http.StatusOK {
			during = msg
			break
		}
		if code != http.StatusServiceUnavailable {
			t.Fatalf("send during the failover = %d %q, want 503 until it is over", code, body)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("no 200 within 20 s of the kill: %v", statuses)
		}
		time.Sleep(20 * time.Millisecond) // a backend's retry interval, not a wait for a state
	}
	t.Logf("failover: %v after the kill, statuses %v", time.Since(start).Round(time.Millisecond), statuses)
	if statuses[http.StatusServiceUnavailable] == 0 {
		t.Errorf("no 503 while the slot had no master: %v", statuses)
	}
	wantMessage(t, conn, during, stream.Position{Epoch: first.Epoch, N: 6})
	for i := 7; i <= 9; i++ {
		b.sendOK(uid, fmt.Sprint("m", i))
		wantMessage(t, conn, fmt.Sprint("m", i), stream.Position{Epoch: first.Epoch, N: uint64(i)})
	}
	again := b.dialStream(uid, "format=json&since="+first.String())
	for i := 2; i <= 5; i++ {
		wantMessage(t, again, fmt.Sprint("m", i), stream.Position{Epoch: first.Epoch, N: uint64(i)})
	}
	wantMessage(t, again, during, stream.Position{Epoch: first.Epoch, N: 6})
	for i := 7; i <= 9; i++ {
		wantMessage(t, again, fmt.Sprint("m", i), stream.Position{Epoch: first.Epoch, N: uint64(i)})
	}
	wantRecovered(t, again, true)
	for _, ts := range []*testServer{a, b} {
		waitReady(t, ts)
	}
	ctx := context.Background()
	if online, _, err := a.broker.Online(ctx, []string{uid}); err != nil || len(online) != 1 {
		t.Errorf("after the failover, Online = %v, %v", online, err)
	}
}
