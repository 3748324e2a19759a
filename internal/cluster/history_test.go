package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
)

// entries builds stream entries newest first for offsets from..to, each
// stamped at ms.
func entries(from, to uint64, ms int64) []redis.XMessage {
	var out []redis.XMessage
	for off := to; off >= from && off > 0; off-- {
		out = append(out, redis.XMessage{
			ID:     fmt.Sprintf("%d-%d", ms, off),
			Values: map[string]any{"o": fmt.Sprint(off), "d": fmt.Sprintf("id%d|1|m%d", off, off)},
		})
	}
	return out
}

func TestHistoryAfter(t *testing.T) {
	tests := []struct {
		name              string
		entries           []redis.XMessage
		n, last           uint64
		cutoff            int64
		wantN             int
		complete, covered bool
	}{
		{"exactly the missing ones", entries(4, 6, 100), 3, 6, 0, 3, true, true},
		{"older ones too", entries(1, 6, 100), 3, 6, 0, 3, true, true},
		{"newer than last too", entries(4, 8, 100), 3, 6, 0, 5, true, true},
		{"window too short", entries(5, 6, 100), 3, 6, 0, 0, false, false},
		{"nothing", nil, 3, 6, 0, 0, false, false},
		{"a hole", append(entries(6, 6, 100), entries(4, 4, 100)...), 3, 6, 0, 0, false, true},
		{"too old", entries(4, 6, 100), 3, 6, 200, 0, false, true},
		{"short of last", entries(4, 5, 100), 3, 6, 0, 2, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			items, complete, covered := historyAfter(tt.entries, "e", tt.n, tt.last, tt.cutoff)
			if len(items) != tt.wantN || complete != tt.complete || covered != tt.covered {
				t.Fatalf("historyAfter = %d items, complete %v, covered %v; want %d, %v, %v",
					len(items), complete, covered, tt.wantN, tt.complete, tt.covered)
			}
			for i, it := range items {
				if it.Off != tt.n+uint64(i)+1 || string(it.M.Data) != fmt.Sprintf("m%d", it.Off) || !it.Replay {
					t.Errorf("item %d = off %d %q", i, it.Off, it.M.Data)
				}
			}
		})
	}
}

// TestEnvelopeRoundTrip: what Publish puts in Redis decodes to the same
// message, whatever the message holds.
func TestEnvelopeRoundTrip(t *testing.T) {
	for _, text := range []string{"hi", "a|b|c", "", "\x00\n|"} {
		m := stream.NewMessage("06a1r3k6c7l2q0e9f1s8", []byte(text), time.Now())
		got, err := decodeEnvelope(encodeEnvelope(m))
		if err != nil || got.ID != m.ID || string(got.Data) != text || !got.Accepted.Equal(m.Accepted) {
			t.Errorf("decodeEnvelope(encodeEnvelope(%q)) = %+v, %v", text, got, err)
		}
	}
	for _, bad := range []string{"", "id", "id|x|m", "id|1"} {
		if _, err := decodeEnvelope(bad); err == nil {
			t.Errorf("decodeEnvelope(%q) = nil error", bad)
		}
	}
}
