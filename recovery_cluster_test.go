package main

import (
	"fmt"
	"testing"
)

// TestClusterRecoveryOnAnotherNode: a client on node A stops reading (its
// network changed; A has not noticed), messages are sent through B, and
// the client comes back on C with since=: C replays them from Redis.
func TestClusterRecoveryOnAnotherNode(t *testing.T) {
	nodes := startCluster(t, 3)
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
		wantMessage(t, again, fmt.Sprintf("m%d", i), position{last.epoch, uint64(i)})
	}
	wantRecovered(t, again, true)
	a.sendWhenOnline("u", "live")
	wantMessage(t, again, "live", position{last.epoch, 6})
}

// TestClusterEpochSurvivesNodeRestart: the history lives in Redis, so a
// node that restarts (here: a new node on the same Redis) recovers a
// client of the old one.
func TestClusterEpochSurvivesNodeRestart(t *testing.T) {
	u, prefix := testRedis(t), testPrefix(t)
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
	wantMessage(t, again, "m2", position{p.epoch, p.n + 1})
}

func TestClusterRecoveryTooOld(t *testing.T) {
	u, prefix := testRedis(t), testPrefix(t)
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
	recent := a.dialStream("u", fmt.Sprintf("since=%s:%d", p.epoch, 3))
	wantMessage(t, recent, "m4", position{p.epoch, 4})
	wantMessage(t, recent, "m5", position{p.epoch, 5})
	wantRecovered(t, recent, true)
	other := a.dialStream("u", "since=ffff:3")
	wantRecovered(t, other, false)
}
