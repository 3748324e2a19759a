package presence

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
)

type downStore struct{}

func (downStore) Arrive(context.Context, string, string) (int64, error) {
	return 0, errors.New("redis down")
}

func (downStore) Leave(context.Context, string, time.Time, time.Duration) error {
	return errors.New("redis down")
}

// TestDrainEndsWithItsContext: with Redis down, a graceful shutdown's
// Drain gives up when its context ends, though the worker was retrying.
func TestDrainEndsWithItsContext(t *testing.T) {
	c := NewCluster(downStore{}, time.Second, 10, func(string, string, time.Time, int64) {}, slog.New(slog.DiscardHandler))
	defer c.Close()
	c.Online("a")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	c.Drain(ctx, []string{"a", "b"})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Drain took %s with a 300 ms context", took)
	}
}

// TestTrackerDebounce: an offline is held back and cancelled by a return
// within the delay; events alternate.
func TestTrackerDebounce(t *testing.T) {
	events := make(chan string, 10)
	tr := New(100*time.Millisecond, func(event, uid string, _ time.Time, _ int64) { events <- event + " " + uid }, time.Now)
	defer tr.Close()
	tr.Online("u")
	tr.Offline("u")
	tr.Online("u") // back within the delay
	tr.Offline("u")
	for _, want := range []string{"online u", "offline u"} {
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("no %q", want)
		}
	}
	select {
	case got := <-events:
		t.Errorf("an extra event %q", got)
	case <-time.After(300 * time.Millisecond): // past the delay: nothing else comes
	}
}
