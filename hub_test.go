package main

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

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
			// Churn, not answers: a read that times out and a close the
			// server no longer takes are both part of it.
			_, _, _ = c.ReadMessage()
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
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
	if err := ts.stop(); err != nil {
		t.Fatalf("Serve() = %v, want nil", err)
	}
	c.Close()
	if p := ts.hub.Pending(); p != 0 {
		t.Errorf("pending = %d after shutdown, want 0", p)
	}
}
