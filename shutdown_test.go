package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestShutdownFlushesQueuesThenCloses1001: on shutdown /readyz turns 503
// while the listeners stay open, /send and /ws are refused, every queued
// message is written, then each connection gets 1001, and Serve returns
// nil.
func TestShutdownFlushesQueuesThenCloses1001(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "1000", "-shutdown-timeout", "30s", "-write-timeout", "30s"))
	conn := ts.dial("u")
	other := ts.dial("v")
	// The client reads nothing yet, so most of these stay queued on the
	// server once the socket buffers are full.
	const n = 150
	big := strings.Repeat("y", 60000)
	for i := range n {
		ts.sendOK("u", fmt.Sprintf("%04d%s", i, big))
	}
	waitFor(t, "messages queued on the server", func() bool { return ts.hub.Pending() > 0 })

	served := make(chan error, 1)
	go func() { served <- ts.stop() }()

	waitFor(t, "/readyz 503 while draining", func() bool {
		code, body := ts.get("/readyz")
		return code == http.StatusServiceUnavailable && body == "shutting down\n"
	})
	if code, _ := ts.send("application/x-www-form-urlencoded", "uid=v&message=late"); code != http.StatusServiceUnavailable {
		t.Errorf("/send while draining = %d, want 503", code)
	}
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr()+"/ws?token="+ts.token("w", time.Hour), nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/ws while draining: err %v, want 503", err)
	}
	wantClose(t, other, websocket.CloseGoingAway, "server shutting down")

	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range n {
		_, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("message %d: %v (queued messages must be flushed before the close)", i, err)
		}
		if want := fmt.Sprintf("%04d", i); string(data[:4]) != want {
			t.Fatalf("message %d starts %q, want %q", i, data[:4], want)
		}
	}
	wantClose(t, conn, websocket.CloseGoingAway, "server shutting down")
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve() = %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
	if p := ts.hub.Pending(); p != 0 {
		t.Errorf("pending = %d after shutdown, want 0", p)
	}
}

// TestShutdownTimeoutCutsDrainShort: a client that never reads cannot hold
// the shutdown past -shutdown-timeout; Serve still returns nil.
func TestShutdownTimeoutCutsDrainShort(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "1000", "-shutdown-timeout", "300ms", "-write-timeout", "1m"))
	ts.dial("u")
	big := strings.Repeat("z", 60000)
	for range 150 {
		ts.sendOK("u", big)
	}
	waitFor(t, "messages queued on the server", func() bool { return ts.hub.Pending() > 0 })
	start := time.Now()
	if err := ts.stop(); err != nil {
		t.Fatalf("Serve() = %v, want nil", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %s with -shutdown-timeout 300ms", d)
	}
	if !strings.Contains(ts.logBuf.String(), "shutdown timeout") {
		t.Errorf("log does not say the drain was cut short:\n%s", ts.logBuf.String())
	}
	if p := ts.hub.Pending(); p != 0 {
		t.Errorf("pending = %d after shutdown, want 0", p)
	}
	if n := ts.hub.Connections(); n != 0 {
		t.Errorf("connections = %d after shutdown, want 0", n)
	}
}

// TestShutdownWithIdleConnections: idle connections close promptly with
// 1001 and the process does not wait for the timeout.
func TestShutdownWithIdleConnections(t *testing.T) {
	ts := startServer(t, testConfig(t, "-shutdown-timeout", "30s"))
	var conns []*websocket.Conn
	for i := range 20 {
		conns = append(conns, ts.dial(fmt.Sprintf("u%d", i%7)))
	}
	done := make(chan error, 1)
	go func() { done <- ts.stop() }()
	for _, c := range conns {
		wantClose(t, c, websocket.CloseGoingAway, "server shutting down")
		c.Close() // answers nothing more; the server has its reply
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown waited for idle connections")
	}
}
