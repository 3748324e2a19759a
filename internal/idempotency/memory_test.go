package idempotency

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func claim(t *testing.T, m *Memory, key, fp string) Outcome {
	t.Helper()
	out, err := m.Claim(context.Background(), []Claim{{Key: key, Fingerprint: fp}})
	if err != nil || len(out) != 1 {
		t.Fatalf("Claim = %v, %v", out, err)
	}
	return out[0]
}

func finish(t *testing.T, m *Memory, key, fp, answer string) {
	t.Helper()
	if err := m.Finish(context.Background(), []Done{{Claim{Key: key, Fingerprint: fp}, answer}}); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryLife(t *testing.T) {
	m := NewMemory(time.Minute, 1<<20)
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	ctx := context.Background()

	if got := claim(t, m, "k", "a"); got.State != Claimed {
		t.Fatalf("first claim: %+v", got)
	}
	if got := claim(t, m, "k", "a"); got.State != InFlight {
		t.Errorf("same request in flight: %+v, want InFlight", got)
	}
	if got := claim(t, m, "k", "b"); got.State != Mismatch {
		t.Errorf("other request in flight: %+v, want Mismatch", got)
	}
	finish(t, m, "k", "a", `{"id":"1"}`)
	if got := claim(t, m, "k", "a"); got.State != Replay || got.Answer != `{"id":"1"}` {
		t.Errorf("same request done: %+v, want Replay of the answer", got)
	}
	if got := claim(t, m, "k", "b"); got.State != Mismatch {
		t.Errorf("other request done: %+v, want Mismatch", got)
	}

	// Released: the key can be claimed again, by any request.
	claim(t, m, "r", "a")
	m.Release(ctx, []Claim{{Key: "r"}})
	if got := claim(t, m, "r", "b"); got.State != Claimed {
		t.Errorf("after release: %+v, want Claimed", got)
	}
	// Release leaves a done key alone.
	m.Release(ctx, []Claim{{Key: "k"}})
	if got := claim(t, m, "k", "a"); got.State != Replay {
		t.Errorf("after releasing a done key: %+v, want Replay", got)
	}

	// Past the TTL the key is new again.
	now = now.Add(time.Minute)
	if got := claim(t, m, "k", "b"); got.State != Claimed {
		t.Errorf("after the TTL: %+v, want Claimed", got)
	}
}

func TestMemoryExpiresAsKeysFinish(t *testing.T) {
	m := NewMemory(time.Minute, 1<<20)
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	for i := range 100 {
		key := fmt.Sprint("old", i)
		claim(t, m, key, "f")
		finish(t, m, key, "f", "answer")
	}
	now = now.Add(2 * time.Minute)
	claim(t, m, "new", "f")
	finish(t, m, "new", "f", "answer")
	if keys, _, evicted := m.Stats(); keys != 1 || evicted != 0 {
		t.Errorf("after the TTL: %d keys (%d evicted), want 1 and 0", keys, evicted)
	}
}

func TestMemoryBounded(t *testing.T) {
	const maxBytes = 100 * (entryOverhead + 40)
	m := NewMemory(time.Hour, maxBytes)
	for i := range 1000 {
		key := fmt.Sprintf("key-%04d", i)
		claim(t, m, key, "fp")
		finish(t, m, key, "fp", "answer-of-thirty-two-bytes......")
	}
	keys, bytes, evicted := m.Stats()
	if bytes > maxBytes || keys > 100 || evicted < 900 {
		t.Errorf("%d keys, %d bytes, %d evicted; want at most %d bytes", keys, bytes, evicted, maxBytes)
	}
	// The newest are kept, the oldest forgotten.
	if got := claim(t, m, "key-0999", "fp"); got.State != Replay {
		t.Errorf("newest key: %+v, want Replay", got)
	}
	if got := claim(t, m, "key-0000", "fp"); got.State != Claimed {
		t.Errorf("oldest key: %+v, want Claimed (evicted)", got)
	}
}

func TestFingerprint(t *testing.T) {
	a := Fingerprint(true, []string{"a", "b"}, "m")
	if b := Fingerprint(true, []string{"b", "a"}, "m"); a != b {
		t.Error("uids in another order: another fingerprint")
	}
	for name, other := range map[string]string{
		"message":           Fingerprint(true, []string{"a", "b"}, "n"),
		"uids":              Fingerprint(true, []string{"a", "c"}, "m"),
		"unicast":           Fingerprint(false, []string{"a"}, "m"),
		"uid split":         Fingerprint(true, []string{"ab"}, "m"),
		"message into uids": Fingerprint(true, []string{"a", "bm"}, ""),
	} {
		if other == a {
			t.Errorf("%s differs but the fingerprint is the same", name)
		}
	}
	if Fingerprint(false, []string{"a"}, "m") == Fingerprint(true, []string{"a"}, "m") {
		t.Error("unicast and multicast to one uid share a fingerprint")
	}
}
