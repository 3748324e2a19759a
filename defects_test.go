package main

// One test per defect of the article's code (../shared/CONTRACT.md, "Known
// defects of the article's code"). Each fails on the article's code.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
)

// Defect 1: a second connection of the same uid overwrote the first in
// userClients, and when the first closed, unregister deleted the second.
func TestArticleDefect1SecondConnectionSurvivesFirstClosing(t *testing.T) {
	ts := startServer(t, testConfig(t))
	first := ts.dial("u")
	second := ts.dial("u")

	ts.sendOK("u", "to both")
	for _, c := range []*websocket.Conn{first, second} {
		if got := readText(t, c); got != "to both" {
			t.Fatalf("got %q, want %q", got, "to both")
		}
	}
	first.Close()
	waitFor(t, "first connection unregistered", func() bool { return ts.hub.Connections() == 1 })

	ts.sendOK("u", "to the second") // the article answers 404 here
	if got := readText(t, second); got != "to the second" {
		t.Fatalf("got %q, want %q", got, "to the second")
	}
}

// Defect 2a: send looked the client up under RLock and wrote to its
// channel after unlocking; a client unregistering in between made the
// write hit a closed channel and panic. Here connections come and go while
// /send pushes to the same uid; any such panic kills the test binary.
func TestArticleDefect2NoSendOnClosedConnection(t *testing.T) {
	ts := startServer(t, testConfig(t))
	stop := hammer(4, func(int, int) bool {
		conn, _, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr()+"/ws?token="+ts.token("u", time.Hour), nil)
		if err != nil {
			t.Errorf("dial: %v", err)
			return false
		}
		conn.Close()
		return true
	})
	codes := map[int]int{}
	for i := range 500 {
		code, body := ts.send("application/x-www-form-urlencoded", fmt.Sprintf("uid=u&message=m%d", i))
		if code != http.StatusOK && code != http.StatusNotFound {
			t.Fatalf("send = %d %q, want 200 or 404", code, body)
		}
		codes[code]++
	}
	stop()
	waitFor(t, "all connections gone", func() bool { return ts.hub.Connections() == 0 })
	waitFor(t, "pending back to 0", func() bool { return ts.hub.Pending() == 0 })
	if codes[http.StatusOK] == 0 {
		t.Errorf("no /send found a connection (codes %v): the race was not exercised", codes)
	}
}

// Defect 2b: with a full queue the article's /send blocked forever on the
// channel. Here a client that reads nothing fills its queue; every /send
// still answers, the connection is closed with 1013 "slow consumer", and
// pending returns to 0.
func TestArticleDefect2FullQueueNeverBlocksSend(t *testing.T) {
	ts := startServer(t, testConfig(t, "-send-buffer", "4", "-write-timeout", "30s"))
	slow := ts.dial("slow")
	fast := ts.dial("fast")
	big := strings.Repeat("x", 60000)
	sent := 0
	for ; sent < 2000 && testutil.Counter(t, ts.metrics.slowConsumers) == 0; sent++ {
		// ts.client has a 10 s timeout: a blocked /send fails the test.
		if code, body := ts.send("application/x-www-form-urlencoded", "uid=slow&message="+big); code != http.StatusOK {
			t.Fatalf("send %d = %d %q, want 200", sent, code, body)
		}
	}
	if testutil.Counter(t, ts.metrics.slowConsumers) != 1 {
		t.Fatalf("no slow consumer after %d messages of %d bytes", sent, len(big))
	}
	t.Logf("slow consumer after %d messages", sent)
	// The other user is not affected.
	ts.sendOK("fast", "unaffected")
	if got := readText(t, fast); got != "unaffected" {
		t.Fatalf("got %q", got)
	}
	// The slow client finally reads: what was written, then 1013.
	slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, r, err := slow.NextReader()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseTryAgainLater) {
				t.Fatalf("read: %v, want close 1013", err)
			}
			if ce, _ := errors.AsType[*websocket.CloseError](err); ce.Text != "slow consumer" { // a close error: checked above
				t.Errorf("close reason %q, want %q", ce.Text, "slow consumer")
			}
			break
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	waitFor(t, "slow connection unregistered", func() bool { return len(ts.hub.clients("slow")) == 0 })
	waitFor(t, "pending back to 0", func() bool { return ts.hub.Pending() == 0 })
	if got := testutil.Counter(t, ts.metrics.failedSlow); got < 1 {
		t.Errorf("pusher_messages_failed_total{reason=slow_consumer} = %v, want at least 1", got)
	}
}

// Defect 3: metrics read len(hub.userClients) without the lock. Under
// -race, scraping while connections come and go would report the race;
// the gauges must also be right afterwards.
func TestArticleDefect3MetricsReadUnderLock(t *testing.T) {
	ts := startServer(t, testConfig(t))
	stop := hammer(1, func(int, int) bool {
		if code, _ := ts.get("/metrics"); code != http.StatusOK {
			t.Errorf("/metrics = %d", code)
			return false
		}
		return true
	})
	var keep []*websocket.Conn
	for i := range 40 {
		c := ts.dial(fmt.Sprintf("u%d", i%10))
		if i%2 == 0 {
			c.Close()
		} else {
			keep = append(keep, c)
		}
	}
	stop()
	waitFor(t, "20 connections left", func() bool { return ts.hub.Connections() == len(keep) })
	_, body := ts.get("/metrics")
	for _, want := range []string{"\nconnections 20\n", "\npusher_users 5\n", "\npending 0\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
}

// Defect 4: readPump never timed out, so a peer that vanished without a
// FIN stayed registered forever. A client that stops answering pings is
// dropped after -pong-wait.
func TestArticleDefect4SilentPeerIsDropped(t *testing.T) {
	ts := startServer(t, testConfig(t, "-ping-interval", "50ms", "-pong-wait", "300ms"))
	// This client never reads, so it never answers the server's pings:
	// to the server it looks like a peer that vanished.
	ts.dial("ghost")
	waitFor(t, "silent peer unregistered", func() bool { return ts.hub.Connections() == 0 })
}

// Defect 5: /send accepted any method and needed no credential.
func TestArticleDefect5SendNeedsPOSTAndAPIKey(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		conn := ts.dial("u")
		form := "application/x-www-form-urlencoded"
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			req, _ := http.NewRequest(m, ts.opsURL()+"/send?uid=u&message=x", strings.NewReader("uid=u&message=x"))
			req.Header.Set("Authorization", "Bearer "+testAPIKey)
			req.Header.Set("Content-Type", form)
			resp, err := ts.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
				t.Errorf("%s /send = %d Allow %q, want 405 Allow POST", m, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
		for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer wrong", "Basic " + testAPIKey, "Bearer " + strings.ToUpper(testAPIKey), "Bearer " + testAPIKey + "x"} {
			code, body := ts.do(http.MethodPost, "/send", form, "uid=u&message=x", auth)
			if code != http.StatusUnauthorized {
				t.Errorf("Authorization %q: /send = %d %q, want 401", auth, code, body)
			}
		}
		if logs := ts.msgLog.logged(); len(logs) != 0 {
			t.Errorf("unauthorized requests logged %+v", logs)
		}
		assertNothingPushed(t, ts, conn, "u")
	})
}

// Defect 6: a message that is not valid UTF-8 was written as a text
// frame, which makes browsers drop the connection.
func TestArticleDefect6InvalidUTF8Refused(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u")
	for _, body := range []string{"uid=u&message=ok%C3%28", "uid=u&message=%ED%A0%80"} { // bad continuation; a surrogate
		if code, reply := ts.send("application/x-www-form-urlencoded", body); code != http.StatusBadRequest {
			t.Errorf("send(%q) = %d %q, want 400", body, code, reply)
		}
	}
	assertNothingPushed(t, ts, conn, "u")
}
