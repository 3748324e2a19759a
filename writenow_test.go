package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A socket that takes frames only in pieces (a tiny send buffer, a client
// that starts reading late and pings all the while): writeNow hands the
// rest of a frame to writeRest, and nothing else (the next message, a
// pong) may be written into the middle of it. Every message must arrive
// whole and in order.
func TestHalfWrittenFramesStayWhole(t *testing.T) {
	for _, format := range []string{"", "json"} {
		t.Run("format="+format, func(t *testing.T) {
			ts := startServer(t, testConfig(t, "-send-buffer", "1000"))
			path := "/ws?token=" + url.QueryEscape(ts.token("u", time.Hour))
			if format != "" {
				path += "&format=" + format
			}
			conn := ts.dialRaw(path, nil)
			waitFor(t, "registered", func() bool { return len(ts.hub.clients("u")) == 1 })
			// The smallest send buffer the kernel allows: most frames go
			// out in several writes.
			if err := ts.hub.clients("u")[0].raw.(*net.TCPConn).SetWriteBuffer(1); err != nil {
				t.Fatal(err)
			}

			const n = 100
			msg := func(i int) string { return fmt.Sprintf("%04d", i) + strings.Repeat("x", maxInlineData-4) }
			filled := make(chan struct{})
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() { // pings: each one's pong must fall between frames
				for {
					select {
					case <-done:
						return
					default:
					}
					if err := conn.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
						return
					}
					time.Sleep(time.Millisecond)
				}
			})
			wg.Go(func() {
				defer close(done)
				<-filled
				conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				for i := range n {
					_, got, err := conn.ReadMessage()
					if err != nil {
						t.Errorf("message %d: %v", i, err)
						return
					}
					if format == "json" {
						var f struct{ Message string }
						if err := json.Unmarshal(got, &f); err != nil {
							t.Errorf("message %d: %v", i, err)
							return
						}
						got = []byte(f.Message)
					}
					if string(got) != msg(i) {
						t.Errorf("message %d = %.10q... (%d bytes), want %.10q...", i, got, len(got), msg(i))
						return
					}
				}
			})
			for i := range n {
				ts.sendOK("u", msg(i))
				if i == 20 {
					close(filled) // far more than the socket holds is queued
				}
			}
			wg.Wait()
			waitFor(t, "nothing pending", func() bool { return ts.hub.Pending() == 0 })
		})
	}
}

// A connection whose read goroutine holds wmu (its pong blocked on a full
// socket: a peer that pings but does not read) must not hold up a /send:
// the multicast answers and reaches the other uid at once, and the held
// connection gets its message once wmu is free.
func TestSendDoesNotWaitForABlockedPong(t *testing.T) {
	ts := startServer(t, testConfig(t))
	slow := ts.dial("slow")
	fast := ts.dial("fast")
	c := ts.hub.clients("slow")[0]
	c.wmu.Lock() // as onPing does while its pong cannot be written

	replied := make(chan int, 1)
	go func() {
		code, _ := ts.send("application/json", `{"uids":["slow","fast"],"message":"hello"}`)
		replied <- code
	}()
	select {
	case code := <-replied:
		if code != 200 {
			t.Fatalf("/send = %d, want 200", code)
		}
	case <-time.After(5 * time.Second):
		c.wmu.Unlock()
		t.Fatal("/send waited for a connection whose pong was blocked")
	}
	if got := readText(t, fast); got != "hello" {
		t.Fatalf("fast got %q", got)
	}
	c.wmu.Unlock()
	if got := readText(t, slow); got != "hello" {
		t.Fatalf("slow got %q after its pong went out", got)
	}
	waitFor(t, "nothing pending", func() bool { return ts.hub.Pending() == 0 })
}
