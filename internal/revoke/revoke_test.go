package revoke

import (
	"fmt"
	"testing"
	"time"
)

// TestMemory: a revocation is remembered for ttl, then forgotten; old
// ones are dropped as new ones come, so the map holds about a ttl's worth.
func TestMemory(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	m := NewMemory(time.Hour, func() time.Time { return now })
	m.Revoke([]string{"a", "b"}, now)
	if at, ok := m.RevokedAt("a"); !ok || !at.Equal(now) {
		t.Fatalf("RevokedAt(a) = %v, %v", at, ok)
	}
	if _, ok := m.RevokedAt("c"); ok {
		t.Error("c was never revoked")
	}
	now = now.Add(2 * time.Hour)
	if _, ok := m.RevokedAt("a"); ok {
		t.Error("a is remembered past the ttl")
	}
	for i := range 10 {
		m.Revoke([]string{fmt.Sprint("u", i)}, now)
	}
	if n := len(m.at); n != 10 {
		t.Errorf("%d revocations kept, want the 10 of the last ttl", n)
	}
}

// TestRefuses: a token issued at or before the revocation's second, or
// without iat, is refused; one issued in a later second is not.
func TestRefuses(t *testing.T) {
	at := time.Unix(100, 500_000_000)
	for _, tt := range []struct {
		iat  time.Time
		want bool
	}{
		{time.Time{}, true},
		{time.Unix(99, 0), true},
		{time.Unix(100, 0), true},
		{time.Unix(100, 900_000_000), true},
		{time.Unix(101, 0), false},
	} {
		if got := Refuses(at, tt.iat); got != tt.want {
			t.Errorf("Refuses(%v, iat %v) = %v, want %v", at, tt.iat, got, tt.want)
		}
	}
}
