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
