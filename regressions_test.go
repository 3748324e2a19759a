package main

// Regression tests for the faults a review of the concurrent core found:
// each failed before its fix.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"go-pusher/message"
)

// startServerWith is startServerLog with a hook that may change the
// server before it listens.
func startServerWith(t *testing.T, cfg Config, hook func(*Server)) *testServer {
	t.Helper()
	logBuf := &syncBuffer{}
	msgLog := newRecordingLogger()
	srv, err := newServer(cfg, slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})), msgLog)
	if err != nil {
		t.Fatal(err)
	}
	hook(srv)
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: srv, t: t, msgLog: msgLog, logBuf: logBuf, cancel: cancel, done: make(chan error, 1),
		client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}
	go func() { ts.done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		ts.stop()
		ts.client.CloseIdleConnections()
	})
	return ts
}

// gatedBroker holds Replay until gate is closed, as a slow Redis would.
type gatedBroker struct {
	Broker
	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func (g *gatedBroker) Replay(ctx context.Context, uid string, since position) ([]qitem, bool) {
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
		epoch = readFrame(t, a).pos(t).epoch
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

// rawWS is a minimal client that sees every frame the server writes.
type rawWS struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRawWS(t *testing.T, addr, path string) *rawWS {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var k [16]byte
	rand.Read(k[:])
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		path, addr, base64.StdEncoding.EncodeToString(k[:]))
	br := bufio.NewReaderSize(c, 1<<16)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return &rawWS{c, br}
}

func (r *rawWS) readFrame() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r.br, h[:]); err != nil {
		return
	}
	op = h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err = io.ReadFull(r.br, b[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err = io.ReadFull(r.br, b[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r.br, payload)
	return
}

// closeReply writes a masked close frame with code 1000, as a client
// answers the server's close.
func (r *rawWS) closeReply() {
	mask := [4]byte{1, 2, 3, 4}
	payload := []byte{0x03 ^ mask[0], 0xe8 ^ mask[1]}
	r.c.Write(append([]byte{0x88, 0x80 | 2, mask[0], mask[1], mask[2], mask[3]}, payload...))
}

// A client frame over the 512-byte limit closes the connection with 1009;
// no data frame may follow that close frame, even while messages keep
// coming (gorilla used to write the close itself, beside the writer).
func TestNoDataFrameAfterTooBigClose(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "100000"))
	for iter := range 100 {
		uid := fmt.Sprintf("u%d", iter)
		ws := dialRawWS(t, ts.Addr(), "/ws?token="+url.QueryEscape(ts.token(uid, time.Hour)))
		waitFor(t, "registered", func() bool { return len(ts.hub.clients(uid)) == 1 })
		m := newMessage("id", []byte("data"), time.Now())
		stop := hammer(1, func(int, int) bool { // a busy uid: messages keep coming
			cs := ts.hub.clients(uid)
			if len(cs) == 0 {
				return false
			}
			if cs[0].queued.Load() < 32 {
				out := ts.hub.getOutbox()
				ts.hub.deliver(uid, cs, qitem{m: m}, out)
				ts.hub.flush(out)
			}
			return true
		})
		ws.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if op, _, err := ws.readFrame(); err != nil || op != 1 {
			t.Fatalf("first frame: opcode %d, %v; want a text frame", op, err)
		}
		// A masked text frame announcing 600 bytes: over the 512 limit.
		ws.c.Write(append([]byte{0x81, 0x80 | 126, 0x02, 0x58, 1, 2, 3, 4}, make([]byte, 600)...))
		sawClose := false
		for {
			op, p, err := ws.readFrame()
			if err != nil {
				break
			}
			if op == 8 {
				if code := binary.BigEndian.Uint16(p); code != websocket.CloseMessageTooBig {
					t.Errorf("close code %d, want 1009", code)
				}
				sawClose = true
				ws.closeReply()
				continue
			}
			if sawClose {
				t.Errorf("connection %d: a frame (opcode %d) after the server's close frame", iter, op)
				break
			}
		}
		if !sawClose {
			t.Errorf("connection %d: no close frame", iter)
		}
		stop()
		ws.c.Close()
	}
}

// A format=json write is bounded: a queue of large messages goes out in
// several writes, not encoded into one buffer of the whole queue.
func TestJSONWritesAreBounded(t *testing.T) {
	server, client := net.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(io.Discard, client) })
	defer wg.Wait()
	defer client.Close()
	defer server.Close()
	h := newHub(hubConfig{SendBuffer: 1000, WriteTimeout: time.Minute}, slog.New(slog.DiscardHandler), message.NoneLogger{}, nil)
	c := &Client{hub: h, raw: server, json: true}
	msg := newMessage("06a1r3k6c7l2q0e9f1s8", []byte(strings.Repeat("\x01", 65536)), time.Now())
	batch := make([]qitem, 228)
	for i := range batch {
		batch[i] = qitem{m: msg, off: uint64(i + 1), epoch: "abc"}
	}
	sizes, n, err := c.writeJSON(batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) == len(batch) || n > maxFrameBytes+6*65536+200 {
		t.Errorf("one JSON write of %d frames, %d bytes: want it cut at about %d bytes", len(sizes), n, maxFrameBytes)
	}
}

// Sends, slow consumers, peer closes, since= replays and a final
// shutdown, all at once: pending comes back to exactly 0.
func TestPendingReturnsToZeroUnderChurn(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "8"))
	stopChurn := hammer(6, func(w, i int) bool {
		uid := fmt.Sprintf("u%d", i%3)
		q := []string{"", "format=json", "since=abc:0"}[(i+w)%3]
		c, _, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr()+"/ws?token="+url.QueryEscape(ts.token(uid, time.Hour))+"&"+q, nil)
		if err != nil {
			return true
		}
		switch i % 4 {
		case 0: // reads a little, then closes properly
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			c.ReadMessage()
			c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
			time.Sleep(5 * time.Millisecond)
			c.Close()
		case 1: // never reads: a slow consumer, then vanishes
			time.Sleep(30 * time.Millisecond)
			c.Close()
		default:
			go func() {
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			}()
			time.Sleep(10 * time.Millisecond)
			c.Close()
		}
		return true
	})
	stopSends := hammer(4, func(w, i int) bool {
		ts.sendJSON(map[string]any{"uids": []string{"u0", "u1", "u2"}, "message": fmt.Sprintf("w%d-%d", w, i)})
		return true
	})
	time.Sleep(3 * time.Second) // how long the churn lasts
	stopChurn()
	stopSends()
	waitFor(t, "all connections gone", func() bool { return ts.hub.Connections() == 0 })
	waitFor(t, "pending back to 0", func() bool { return ts.hub.Pending() == 0 })
	// keep one open over shutdown
	c := ts.dial("last")
	for range 20 {
		ts.sendOK("last", "x")
	}
	ts.stop()
	c.Close()
	if p := ts.hub.Pending(); p != 0 {
		t.Errorf("pending = %d after shutdown, want 0", p)
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

// Idle uid states count against -history-bytes, but eviction drops
// messages first: once idle states fill the budget, a connected uid's
// fresh message is evicted at once and since= gets recovered:false.
func TestIdleStatesDoNotCrowdOutMessages(t *testing.T) {
	now := time.Now()
	h := newMemHistory(historyLimits{Size: 100, TTL: 5 * time.Minute, MaxBytes: 20000}, func() time.Time { return now }, prometheus.NewRegistry())
	m := newMessage("06a1r3k6c7l2q0e9f1s8", []byte("hello"), now)
	h.mu.Lock()
	for i := range 150 { // users that came and went today
		uid := fmt.Sprintf("gone%03d", i)
		h.appendLocked(uid, m)
		for h.users[uid].n > 0 {
			h.removeLocked(h.users[uid].at(0), "age") // their messages expired
		}
	}
	h.mu.Unlock()
	for i := range 150 {
		h.userOffline(fmt.Sprintf("gone%03d", i))
	}
	h.mu.Lock()
	it, _ := h.appendLocked("alice", m) // alice is connected
	h.evictLocked()
	n := h.users["alice"].n
	h.mu.Unlock()
	if n == 0 {
		t.Errorf("alice's message %d was evicted at once while %d-byte idle states stay", it.off, stateOverhead)
	}
}
