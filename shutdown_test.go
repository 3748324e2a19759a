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
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
	"go-pusher/message"
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

// gatedBroker holds Replay until gate is closed, as a slow Redis would.
type gatedBroker struct {
	Broker
	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func (g *gatedBroker) Replay(ctx context.Context, uid string, since stream.Position) ([]stream.Item, bool) {
	g.once.Do(func() { close(g.entered) })
	<-g.gate
	return g.Broker.Replay(ctx, uid, since)
}

// A graceful shutdown during a since= replay must not write the live
// messages queued meanwhile without the replay: the client's last offset
// would jump over the gap. They are dropped (history has them) and the
// client gets 1001, then recovers everything with since=.
func TestShutdownDuringReplayLeavesNoGap(t *testing.T) {
	gb := &gatedBroker{entered: make(chan struct{}), gate: make(chan struct{})}
	ts := startServerWith(t, testConfig(t, "-shutdown-timeout", "3s"), func(s *Server) { gb.Broker = s.broker; s.broker = gb })
	a := ts.dialStream("u", "format=json")
	var epoch string
	for i := 1; i <= 3; i++ {
		ts.sendOK("u", fmt.Sprintf("m%d", i))
		epoch = readFrame(t, a).pos(t).Epoch
	}
	// b saw m1 and reconnects with since=E:1; its replay (m2, m3) is slow.
	b := ts.dialRaw("/ws?token="+url.QueryEscape(ts.token("u", time.Hour))+"&since="+epoch+":1", nil)
	<-gb.entered
	ts.sendOK("u", "m4") // queued on b, held
	ts.sendOK("u", "m5")

	stopped := make(chan error, 1)
	go func() { stopped <- ts.stop() }()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, data, err := b.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Errorf("read: %v, want close 1001", err)
			}
			break
		}
		t.Errorf("got %s before the close: the live messages of a held connection went out without its replay", data)
	}
	close(gb.gate)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// A /send stuck in the message log (stdout is a pipe nobody reads) must
// not keep the process from exiting within -shutdown-timeout.
func TestStuckStdoutDoesNotBlockShutdown(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close() // unsticks the writer, whatever happens
	ts := startServerLog(t, testConfig(t, "-shutdown-timeout", "1s"), message.NewStdoutLogger(pw, 0))
	c := ts.dial("u")
	defer c.Close()
	var sender sync.WaitGroup
	defer sender.Wait()
	sender.Go(func() {
		req, _ := http.NewRequest(http.MethodPost, ts.opsURL()+"/send", strings.NewReader("uid=u&message=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+testAPIKey)
		if resp, err := ts.client.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	waitFor(t, "the /send stuck in the log", func() bool { return ts.inflight.Load() == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- ts.stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		pr.Close()
		<-stopped
		t.Fatal("Serve has not returned 5 s after the signal with -shutdown-timeout 1s")
	}
}

// TestSignalDuringStart: a signal that comes while the server starts
// (Serve called with its context done already) still ends Serve.
// fasthttp's Shutdown does nothing for a Serve that has not begun yet,
// which then served on for good.
func TestSignalDuringStart(t *testing.T) {
	for range 100 {
		srv, err := newServer(testConfig(t, "-internal-addr", "127.0.0.1:0"), slog.New(slog.DiscardHandler), message.NoneLogger{})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Serve = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve has not returned 10 s after a signal during start")
		}
	}
}
