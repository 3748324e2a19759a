package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/message"
)

type failConn struct{ net.Conn }

func (failConn) Write([]byte) (int, error) { return 0, errors.New("connection reset") }

// A JSON batch bigger than maxFrameBytes whose first write fails: the
// items after the first chunk must be uncounted too.
func TestChunkedJSONWriteFailureUncountsTheRest(t *testing.T) {
	var srv *websocket.Conn
	ready := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv, _ = (&websocket.Upgrader{}).Upgrade(w, r, nil)
		close(ready)
	}))
	defer hs.Close()
	cli, _, err := websocket.DefaultDialer.Dial("ws://"+hs.Listener.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	<-ready
	h := newHub(hubConfig{SendBuffer: 1000, WriteTimeout: time.Minute}, slog.New(slog.DiscardHandler), message.NoneLogger{}, nil)
	h.metrics = newMetrics(h)
	c := &Client{hub: h, conn: srv, raw: failConn{srv.NetConn()}, uid: "u", json: true}
	msg := newMessage("06a1r3k6c7l2q0e9f1s8", []byte(strings.Repeat("a", 60000)), time.Now())
	batch := make([]qitem, 20) // 1.2 MB: about five chunks
	for i := range batch {
		batch[i] = qitem{m: msg, off: uint64(i + 1), epoch: "e"}
	}
	c.queued.Store(int32(len(batch)))
	h.pending.Store(int64(len(batch)))
	if c.writeBatch(batch) {
		t.Fatal("writeBatch on a failing socket = true")
	}
	if p, q := h.Pending(), c.queued.Load(); p != 0 || q != 0 {
		t.Errorf("after a failed write: pending = %d, queued = %d; want 0, 0 (the items after the first chunk are never uncounted nor failed)", p, q)
	}
}

// End to end: a format=json client that stops reading while large messages
// arrive; its write times out in the middle of a batch. Once the
// connection is gone, pending must be 0.
func TestJSONWriteTimeoutLeavesNothingPending(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "100000", "-write-timeout", "2s", "-max-message-size", "65536"))
	ws := dialRawWS(t, ts.Addr(), "/ws?format=json&token="+url.QueryEscape(ts.token("u", time.Hour)))
	waitFor(t, "registered", func() bool { return len(ts.hub.clients("u")) == 1 })
	big := strings.Repeat("a", 60000)
	stop := hammer(4, func(int, int) bool {
		code, _ := ts.send("application/x-www-form-urlencoded", "uid=u&message="+big)
		return code == 200
	})
	// The socket fills, the writer waits, the queue grows: more than one
	// JSON write's worth (maxFrameBytes) behind it.
	waitFor(t, "a queue behind a full socket", func() bool {
		cs := ts.hub.clients("u")
		return len(cs) == 1 && int(cs[0].queued.Load())*len(big) > 4*maxFrameBytes
	})
	buf := make([]byte, 1<<20)
	end := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(end) { // drain: the writer takes the big batch
		ws.c.SetReadDeadline(end)
		ws.c.Read(buf)
	}
	// and stop reading again: a later chunk of that batch times out
	waitFor(t, "connection gone", func() bool { return ts.hub.Connections() == 0 })
	stop()
	ws.c.Close()
	waitFor(t, "pending back to 0 with no connection left", func() bool { return ts.hub.Pending() == 0 })
}
