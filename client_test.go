package main

import (
	"log/slog"
	"testing"
	"time"

	"go-pusher/message"
)

// heldClient is a Client between registration and release, with no
// writer goroutine: the tests look at its queue.
func heldClient(t *testing.T) *Client {
	t.Helper()
	h := newHub(hubConfig{SendBuffer: 10}, slog.New(slog.DiscardHandler), message.NoneLogger{}, nil)
	c := &Client{hub: h, uid: "u", json: true, held: true}
	c.writing = true // as if a writer ran: nothing starts one
	return c
}

func item(epoch string, off uint64) qitem {
	return qitem{m: newMessage("id", []byte("x"), time.Now()), off: off, epoch: epoch}
}

// TestReleaseKeepsANewEpoch: a live message of another epoch than since's
// is not taken for one the replay covered, whatever its offset.
func TestReleaseKeepsANewEpoch(t *testing.T) {
	c := heldClient(t)
	c.enqueue(item("new", 1), new(outbox))
	c.release(nil, true, position{"old", 5})
	if len(c.queue) != 2 || c.queue[1].epoch != "new" {
		t.Fatalf("queue after release = %+v, want the recovered frame and the new-epoch message", c.queue)
	}
}

// TestReleaseDropsLiveCopiesOfTheReplay: live messages the replay covers
// are dropped, before and after release (in cluster mode one published
// between the subscription and the history read arrives after release).
func TestReleaseDropsLiveCopiesOfTheReplay(t *testing.T) {
	c := heldClient(t)
	c.enqueue(item("e", 4), new(outbox)) // live, queued during the replay
	replay := []qitem{item("e", 3), item("e", 4), item("e", 5)}
	for i := range replay {
		replay[i].replay = true
	}
	c.release(replay, true, position{"e", 2})
	c.enqueue(item("e", 5), new(outbox)) // live, after release
	c.enqueue(item("e", 6), new(outbox))
	var offs []uint64
	for _, it := range c.queue {
		if !it.ctl {
			offs = append(offs, it.off)
		}
	}
	if len(offs) != 4 || offs[0] != 3 || offs[1] != 4 || offs[2] != 5 || offs[3] != 6 {
		t.Fatalf("offsets queued = %v, want 3 4 5 6 once each", offs)
	}
	if got := c.hub.Pending(); got != int64(len(c.queue)) {
		t.Errorf("pending = %d, want %d (the queue)", got, len(c.queue))
	}
}
