package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
	"go-pusher/internal/testutil"
)

// frame is a format=json frame: a message, or the recovered flag.
type frame struct {
	ID        string `json:"id"`
	Offset    string `json:"offset"`
	Message   string `json:"message"`
	Recovered *bool  `json:"recovered"`
}

func (f frame) pos(t *testing.T) stream.Position {
	t.Helper()
	p, err := stream.ParsePosition(f.Offset)
	if err != nil {
		t.Fatalf("offset %q: %v", f.Offset, err)
	}
	return p
}

// dialStream connects uid with query (format=json, since=...) and waits
// until the hub has it.
func (ts *testServer) dialStream(uid, query string) *websocket.Conn {
	ts.t.Helper()
	before := len(ts.hub.clients(uid))
	conn := ts.dialRaw("/ws?token="+url.QueryEscape(ts.token(uid, time.Hour))+"&"+query, nil)
	waitFor(ts.t, "uid "+uid+" registered", func() bool { return len(ts.hub.clients(uid)) > before })
	return conn
}

func readFrame(t *testing.T, conn *websocket.Conn) frame {
	t.Helper()
	raw := readText(t, conn)
	var f frame
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		t.Fatalf("frame %q is not JSON: %v", raw, err)
	}
	return f
}

func wantRecovered(t *testing.T, conn *websocket.Conn, want bool) {
	t.Helper()
	f := readFrame(t, conn)
	if f.Recovered == nil || *f.Recovered != want {
		t.Fatalf("got %+v, want {\"recovered\": %v}", f, want)
	}
}

func wantMessage(t *testing.T, conn *websocket.Conn, msg string, p stream.Position) {
	t.Helper()
	f := readFrame(t, conn)
	if f.Message != msg || f.pos(t) != p || f.Recovered != nil {
		t.Fatalf("got %+v, want message %q at %s", f, msg, p)
	}
}

func TestJSONFramesCarryIDAndOffset(t *testing.T) {
	ts := startServer(t, testConfig(t))
	js := ts.dialStream("u", "format=json")
	raw := ts.dial("u")
	var epoch string
	for i := 1; i <= 3; i++ {
		msg := fmt.Sprintf(`m%d "quoted" \ é`, i)
		id := ts.sendOK("u", msg)
		f := readFrame(t, js)
		p := f.pos(t)
		if i == 1 {
			epoch = p.Epoch
		}
		if f.ID != id || f.Message != msg || p != (stream.Position{Epoch: epoch, N: uint64(i)}) {
			t.Fatalf("frame %+v, want id %s message %q offset %s:%d", f, id, msg, epoch, i)
		}
		if got := readText(t, raw); got != msg {
			t.Fatalf("raw frame %q, want the message alone", got)
		}
	}
}

func TestStreamOptionsRefusedBeforeUpgrade(t *testing.T) {
	ts := startServer(t, testConfig(t))
	tok := url.QueryEscape(ts.token("u", time.Hour))
	for _, q := range []string{"since=abc", "since=e:x", "since=", "since=E:1", "since=e:-1", "since=:1", "format=xml", "since=" + strings.Repeat("a", 33) + ":1"} {
		_, resp, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr()+"/ws?token="+tok+"&"+q, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400 before the upgrade", q, err)
		}
	}
	if n := ts.hub.Connections(); n != 0 {
		t.Errorf("%d connections registered", n)
	}
}

// TestRecoveryAfterSlowConsumerClose: a connection closed as a slow
// consumer with messages queued reconnects with since= and gets every
// message it had not read, in order, then {"recovered": true}, then the
// live stream.
func TestRecoveryAfterSlowConsumerClose(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "4", "-history-size", "1000", "-write-timeout", "30s"))
	conn := ts.dialStream("u", "format=json")
	big := strings.Repeat("x", 60000)
	sent := 0
	for ; testutil.Counter(t, ts.metrics.slowConsumers) == 0; sent++ {
		if sent == 2000 {
			t.Fatal("no slow consumer")
		}
		ts.sendOK("u", fmt.Sprintf("%d:%s", sent+1, big))
	}
	// Read what made it before the close; keep the last offset.
	var last stream.Position
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseTryAgainLater) {
				t.Fatalf("read: %v, want close 1013", err)
			}
			break
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		last = f.pos(t)
	}
	if last.N >= uint64(sent) {
		t.Fatalf("read %d of %d: nothing was lost, the test shows nothing", last.N, sent)
	}
	waitFor(t, "slow connection gone", func() bool { return ts.hub.Connections() == 0 })

	again := ts.dialStream("u", "since="+last.String())
	for n := last.N + 1; n <= uint64(sent); n++ {
		f := readFrame(t, again)
		if p := f.pos(t); p != (stream.Position{Epoch: last.Epoch, N: n}) || !strings.HasPrefix(f.Message, strconv.FormatUint(n, 10)+":") {
			t.Fatalf("replayed %s %.10q, want offset %d", f.Offset, f.Message, n)
		}
	}
	wantRecovered(t, again, true)
	ts.sendOK("u", "live")
	wantMessage(t, again, "live", stream.Position{Epoch: last.Epoch, N: uint64(sent) + 1})
	waitFor(t, "pending back to 0", func() bool { return ts.hub.Pending() == 0 })
}

// TestRecoveryCases: since at the current offset, too old, another epoch,
// ahead of the current offset, and history off.
func TestRecoveryCases(t *testing.T) {
	ts := startServer(t, testConfig(t, "-history-size", "3"))
	keep := ts.dialStream("u", "format=json") // keeps u online while others reconnect
	var epoch string
	for i := 1; i <= 10; i++ {
		ts.sendOK("u", fmt.Sprintf("m%d", i))
		epoch = readFrame(t, keep).pos(t).Epoch
	}
	tests := []struct {
		name   string
		since  string
		ok     bool
		replay []string
	}{
		{"current", epoch + ":10", true, nil},
		{"within history", epoch + ":8", true, []string{"m9", "m10"}},
		{"oldest kept", epoch + ":7", true, []string{"m8", "m9", "m10"}},
		{"too old", epoch + ":6", false, nil},
		{"from the start", epoch + ":0", false, nil},
		{"other epoch", "abc123:10", false, nil},
		{"ahead", epoch + ":11", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := ts.dialStream("u", "since="+tt.since)
			for i, want := range tt.replay {
				wantMessage(t, conn, want, stream.Position{Epoch: epoch, N: uint64(11 - len(tt.replay) + i)})
			}
			wantRecovered(t, conn, tt.ok)
			conn.Close()
			waitFor(t, "reconnection gone", func() bool { return len(ts.hub.clients("u")) == 1 })
		})
	}
	if got := ts.metric("pusher_recoveries_total", "result=failed"); got != 4 {
		t.Errorf("pusher_recoveries_total{result=failed} = %v, want 4", got)
	}

	off := startServer(t, testConfig(t, "-history-size", "0"))
	k := off.dialStream("v", "format=json")
	off.sendOK("v", "one")
	p := readFrame(t, k).pos(t)
	if p.N != 1 {
		t.Fatalf("offset with history off = %s, want n 1 (offsets are given anyway)", p)
	}
	conn := off.dialStream("v", "since="+p.String())
	wantRecovered(t, conn, false)
}

// TestRecoveryConcurrentSends: messages sent while a connection replays
// reach it after the replay, without a gap or a duplicate, in order.
func TestRecoveryConcurrentSends(t *testing.T) {
	ts := startServer(t, testConfig(t, "-history-size", "1000", "-send-buffer", "10000"))
	keep := ts.dialStream("u", "format=json")
	ts.sendOK("u", "m1")
	epoch := readFrame(t, keep).pos(t).Epoch
	go func() {
		for {
			if _, _, err := keep.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for i := 2; i <= 200; i++ {
		ts.sendOK("u", fmt.Sprintf("m%d", i))
	}

	const more = 300
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 201; i <= 200+more; i++ {
			ts.sendOK("u", fmt.Sprintf("m%d", i))
		}
	})
	conn := ts.dialStream("u", "since="+epoch+":50")
	next, recovered := uint64(51), false
	for next <= 200+more {
		f := readFrame(t, conn)
		if f.Recovered != nil {
			if !*f.Recovered || recovered {
				t.Fatalf("recovered frame %+v (seen before: %v)", f, recovered)
			}
			recovered = true
			continue
		}
		if p := f.pos(t); p.N != next || f.Message != fmt.Sprintf("m%d", next) {
			t.Fatalf("got %s %q, want offset %d", f.Offset, f.Message, next)
		}
		next++
	}
	wg.Wait()
	if !recovered {
		t.Fatal("no recovered frame")
	}
}

// TestHistoryMemoryBounds: the byte budget and the age hold under a
// flood, as /metrics shows them (internal/history tests each bound in
// detail).
func TestHistoryMemoryBounds(t *testing.T) {
	ts := startServer(t, testConfig(t, "-history-size", "50", "-history-bytes", "20000", "-history-ttl", "300ms"))
	for i := range 5 {
		c := ts.dialStream(fmt.Sprintf("u%d", i), "format=json")
		go func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
	}
	msg := strings.Repeat("h", 200)
	for range 40 {
		for i := range 5 {
			ts.sendOK(fmt.Sprintf("u%d", i), msg)
		}
	}
	if b := ts.metric("pusher_history_bytes"); b > 20000 || b == 0 {
		t.Errorf("pusher_history_bytes = %v after the flood, want 1 to 20000", b)
	}
	if got := ts.metric("pusher_history_evicted_total", "reason=bytes"); got == 0 {
		t.Error("nothing evicted for the byte budget")
	}
	// Age: with nothing new, everything expires.
	waitFor(t, "history expired", func() bool { return ts.metric("pusher_history_messages") == 0 })
	if got := ts.metric("pusher_history_evicted_total", "reason=age"); got == 0 {
		t.Error("nothing evicted by age")
	}
}

// TestHistoryNotStoredFor404: a unicast to a uid with no connection is a
// 404 and is not stored; nor is a multicast's not_found uid.
func TestHistoryNotStoredFor404(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ts.send("application/x-www-form-urlencoded", "uid=nobody&message=x")
	ts.sendJSON(map[string]any{"uids": []string{"nobody", "nor-me"}, "message": "x"})
	if n, b := ts.metric("pusher_history_messages"), ts.metric("pusher_history_bytes"); n != 0 || b != 0 {
		t.Errorf("history holds %v messages, %v bytes after 404s", n, b)
	}
}

// TestRecoveryAfterQuietSpell: a client that comes back after its uid's
// messages expired, with nothing sent meanwhile, recovers with nothing to
// replay (a laptop waking up) rather than {"recovered": false}.
func TestRecoveryAfterQuietSpell(t *testing.T) {
	ts := startServer(t, testConfig(t, "-history-ttl", "100ms"))
	conn := ts.dialStream("u", "format=json")
	ts.sendOK("u", "m1")
	p := readFrame(t, conn).pos(t)
	conn.Close()
	waitFor(t, "messages expired", func() bool {
		return ts.metric("pusher_history_messages") == 0 && ts.hub.Connections() == 0
	})
	again := ts.dialStream("u", "since="+p.String())
	wantRecovered(t, again, true)
	ts.sendOK("u", "m2")
	wantMessage(t, again, "m2", stream.Position{Epoch: p.Epoch, N: 2})
}
