package main

import (
	"encoding/binary"
	"time"
)

// maxFrameHeader is the longest header of an unmasked frame.
const maxFrameHeader = 10

// Message is one accepted /send message, shared by every connection it is
// queued on. Its frame header is encoded once, here, so that writing it to
// any number of connections copies nothing.
type Message struct {
	ID       string
	Data     []byte // the frame payload: exactly the /send message
	Accepted time.Time

	hdr    [maxFrameHeader]byte
	hdrLen uint8
}

// newMessage returns a message whose text frame is ready to write.
func newMessage(id string, data []byte, accepted time.Time) *Message {
	m := &Message{ID: id, Data: data, Accepted: accepted}
	m.hdrLen = uint8(len(appendTextFrameHeader(m.hdr[:0], len(data))))
	return m
}

// header is the frame header of m's text frame.
func (m *Message) header() []byte { return m.hdr[:m.hdrLen] }

// frameLen is the length of m's frame on the wire.
func (m *Message) frameLen() int64 { return int64(m.hdrLen) + int64(len(m.Data)) }

// appendTextFrameHeader appends the header of a final, unmasked text
// frame carrying n bytes (RFC 6455 section 5.2; a server never masks).
func appendTextFrameHeader(b []byte, n int) []byte {
	const finText = 0x80 | 0x1
	switch {
	case n <= 125:
		return append(b, finText, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, finText, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, finText, 127), uint64(n))
	}
}
