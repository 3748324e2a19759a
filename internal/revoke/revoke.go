// Package revoke remembers, on a single node, when each uid's tokens were
// revoked (POST /disconnect with "revoke"), for a while: a token of that
// uid issued at or before that second is refused. Cluster mode keeps the
// same in Redis (internal/cluster).
package revoke

import (
	"sync"
	"time"
)

// Memory is the revocations of a single node. Each lasts ttl; the
// expired ones are dropped as new ones come, so that it holds at most
// the revocations of the last ttl.
type Memory struct {
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	at    map[string]time.Time // uid → when its tokens were revoked
	swept time.Time            // the last drop of expired revocations
}

// NewMemory remembers revocations for ttl.
func NewMemory(ttl time.Duration, now func() time.Time) *Memory {
	return &Memory{ttl: ttl, now: now, at: map[string]time.Time{}}
}

// Revoke records that uids' tokens up to at are revoked.
func (m *Memory) Revoke(uids []string, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if now.Sub(m.swept) > m.ttl/4 {
		for uid, t := range m.at {
			if now.Sub(t) > m.ttl {
				delete(m.at, uid)
			}
		}
		m.swept = now
	}
	for _, uid := range uids {
		m.at[uid] = at
	}
}

// RevokedAt returns when uid's tokens were revoked, if that was within
// ttl.
func (m *Memory) RevokedAt(uid string) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.at[uid]
	if !ok || m.now().Sub(t) > m.ttl {
		return time.Time{}, false
	}
	return t, true
}

// Refuses reports whether a token of uid issued at iat (zero: unknown)
// is revoked: issued at or before the second of the revocation.
func Refuses(revokedAt, iat time.Time) bool {
	return iat.IsZero() || iat.Unix() <= revokedAt.Unix()
}
