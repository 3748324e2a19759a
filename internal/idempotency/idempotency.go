// Package idempotency owns what an idempotency key means: the fingerprint
// that tells the same request from a different one, the outcomes of
// claiming a key, and the store that remembers keys on a single node
// (Memory). In cluster mode the keys live in Redis (internal/cluster),
// with the same outcomes.
//
// A key's life: a request claims it (Claimed) and, while it runs, the same
// key gets InFlight; if the request ends in a 200 it is finished with the
// answer, which later requests with the key and the same fingerprint get
// again (Replay) until the TTL passes; any other end releases it, so the
// request can be retried with the key. A key with another fingerprint gets
// Mismatch, whether in flight or finished.
package idempotency

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
)

// State is the outcome of claiming a key.
type State uint8

// The states.
const (
	Claimed  State = iota // the key is this request's now
	Replay                // done before with the same request: Answer is its answer
	InFlight              // the same request holds it now
	Mismatch              // held or done by a different request
)

// Outcome is what claiming a key found.
type Outcome struct {
	State  State
	Answer string // with Replay: the first request's answer
}

// Claim is one key a request wants: Fingerprint says which request it is,
// Token which attempt holds it (a store that outlives the process uses it
// so that one attempt never releases another's claim).
type Claim struct {
	Key, Fingerprint, Token string
}

// Done is a claim whose request got a 200, and its answer.
type Done struct {
	Claim
	Answer string
}

// Fingerprint identifies a request to uids of message: the same uids in
// any order and the same message give the same fingerprint; a unicast and
// a multicast to one uid differ.
func Fingerprint(multicast bool, uids []string, message string) string {
	h := sha256.New()
	if multicast {
		h.Write([]byte{'m'})
	} else {
		h.Write([]byte{'u'})
	}
	sorted := slices.Clone(uids)
	slices.Sort(sorted)
	for _, uid := range sorted {
		// A uid holds no control character (stream.CheckUID): NUL
		// separates them unambiguously.
		h.Write([]byte(uid))
		h.Write([]byte{0})
	}
	h.Write([]byte{1})
	h.Write([]byte(message))
	return hex.EncodeToString(h.Sum(nil)[:16])
}
