package stream

import (
	"encoding/binary"
	"time"
	"unsafe"
)

// MaxFrameHeader is the longest header of an unmasked frame.
const MaxFrameHeader = 10

// Message is one accepted /send message, shared by every connection it is
// queued on. Its text frame header is encoded once, here, so that writing
// it to any number of connections copies nothing.
type Message struct {
	ID       string
	Data     []byte // the frame payload: exactly the /send message
	Accepted time.Time

	hdr    [MaxFrameHeader]byte
	hdrLen uint8
}

// NewMessage returns a message whose text frame is ready to write. data
// must not change afterwards: connections write it as it is.
func NewMessage(id string, data []byte, accepted time.Time) *Message {
	m := &Message{ID: id, Data: data, Accepted: accepted}
	m.hdrLen = uint8(len(AppendTextFrameHeader(m.hdr[:0], len(data))))
	return m
}

// Header is the header of m's text frame.
func (m *Message) Header() []byte { return m.hdr[:m.hdrLen] }

// FrameLen is the length of m's text frame on the wire.
func (m *Message) FrameLen() int64 { return int64(m.hdrLen) + int64(len(m.Data)) }

// Item is a message queued on one connection, with its place in the
// stream of the connection's uid (the offset differs per uid in a
// multicast, so it is not part of the shared Message).
type Item struct {
	M      *Message
	Off    uint64 // 0: none (a control frame, or a history failure)
	Epoch  string
	Ctl    bool // M.Data is a whole frame payload ({"recovered": ...}), not a message
	Replay bool // from history: not counted against the connection's queue limit
}

// Pos is the item's place in its uid's stream.
func (it Item) Pos() Position { return Position{Epoch: it.Epoch, N: it.Off} }

// The opcodes of the frames a server writes (RFC 6455 section 5.2).
const (
	OpText  = 0x1
	OpClose = 0x8
	OpPing  = 0x9
	OpPong  = 0xa
)

// AppendFrameHeader appends the header of a final, unmasked frame of
// opcode op carrying n bytes (a server never masks).
func AppendFrameHeader(b []byte, op byte, n int) []byte {
	fin := 0x80 | op
	switch {
	case n <= 125:
		return append(b, fin, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, fin, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, fin, 127), uint64(n))
	}
}

// AppendTextFrameHeader appends the header of a text frame of n bytes.
func AppendTextFrameHeader(b []byte, n int) []byte { return AppendFrameHeader(b, OpText, n) }

// NewMessageString is NewMessage for data held in a string (a message
// decoded from Redis), without copying it: a string never changes.
func NewMessageString(id, data string, accepted time.Time) *Message {
	return NewMessage(id, unsafe.Slice(unsafe.StringData(data), len(data)), accepted)
}
