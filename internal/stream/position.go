package stream

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Position is a place in a uid's stream of messages: the epoch that names
// the history and the offset N counted in it (1, 2, 3, ...). N 0 is the
// place before the first message.
type Position struct {
	Epoch string
	N     uint64
}

// String formats p as a client sees it in a frame's offset and sends it
// back in ?since=.
func (p Position) String() string { return p.Epoch + ":" + strconv.FormatUint(p.N, 10) }

// MaxEpochLen bounds the epoch of a since parameter.
const MaxEpochLen = 32

// ParsePosition reads "<epoch>:<n>" as sent in ?since=: an epoch of lower
// case letters and digits, a decimal offset.
func ParsePosition(s string) (Position, error) {
	epoch, n, ok := strings.Cut(s, ":")
	if !ok || epoch == "" || len(epoch) > MaxEpochLen || strings.ContainsFunc(epoch, func(r rune) bool {
		return ('0' > r || r > '9') && ('a' > r || r > 'z')
	}) {
		return Position{}, errors.New("want <epoch>:<n>, as in the offset of a message")
	}
	v, err := strconv.ParseUint(n, 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("offset %q is not a number", n)
	}
	return Position{epoch, v}, nil
}

// NewEpoch returns a fresh random epoch.
func NewEpoch() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
