package main

import (
	"testing"
)

func TestDeliverToConnectedUser(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("alice")
	id := ts.sendOK("alice", "hello, 世界")
	if got := readText(t, conn); got != "hello, 世界" {
		t.Fatalf("got %q, want %q", got, "hello, 世界")
	}
	waitFor(t, "delivered status", func() bool {
		s, _ := ts.msgLog.status(id, "alice")
		return s == 1
	})
}
