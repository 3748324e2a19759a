package stream

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"
)

// idEncoding is base32hex in lower case: ids sort like the bytes they
// encode, so a string sort of ids is a sort by time.
var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// IDGenerator makes message ids: 20 characters encoding 12 bytes, a 48-bit
// millisecond timestamp, a 24-bit random node number chosen at start and a
// 24-bit counter starting at a random value. Two ids of one process differ
// unless 16.7 million are made in one millisecond; ids of two processes
// collide only if their node numbers do as well.
type IDGenerator struct {
	node [3]byte
	seq  atomic.Uint32
}

// NewIDGenerator seeds a generator from crypto/rand.
func NewIDGenerator() (*IDGenerator, error) {
	var seed [7]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("seed message ids: %w", err)
	}
	g := &IDGenerator{}
	copy(g.node[:], seed[:3])
	g.seq.Store(binary.BigEndian.Uint32(seed[3:]))
	return g, nil
}

// Next returns a new id for a message accepted at now.
func (g *IDGenerator) Next(now time.Time) string {
	var b [12]byte
	ms := uint64(now.UnixMilli())
	b[0], b[1], b[2] = byte(ms>>40), byte(ms>>32), byte(ms>>24)
	b[3], b[4], b[5] = byte(ms>>16), byte(ms>>8), byte(ms)
	copy(b[6:9], g.node[:])
	s := g.seq.Add(1)
	b[9], b[10], b[11] = byte(s>>16), byte(s>>8), byte(s)
	return idEncoding.EncodeToString(b[:])
}
