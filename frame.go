package main

import (
	"encoding/binary"
	"strconv"
	"time"

	"go-pusher/message"
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

// qitem is a message queued on one connection, with its place in the
// stream of the connection's uid (the offset differs per uid in a
// multicast, so it is not part of the shared Message).
type qitem struct {
	m      *Message
	off    uint64 // 0: none (a control frame, or a history failure)
	epoch  string
	ctl    bool // m.Data is a whole frame payload ({"recovered": ...})
	replay bool // from history: not counted against -send-buffer
}

// appendJSONFrame appends it as the text frame of a format=json connection:
//
//	{"id":"<message id>","offset":"<epoch>:<n>","message":"<message>"}
//
// The payload is written after room for the longest header, then moved
// next to the header once its length is known.
func appendJSONFrame(b []byte, it qitem) []byte {
	start := len(b)
	b = append(b, make([]byte, maxFrameHeader)...)
	p := len(b)
	if it.ctl {
		b = append(b, it.m.Data...)
	} else {
		b = append(b, `{"id":`...)
		b = message.AppendJSONString(b, it.m.ID)
		b = append(b, `,"offset":"`...)
		b = append(b, it.epoch...)
		b = append(b, ':')
		b = strconv.AppendUint(b, it.off, 10)
		b = append(b, `","message":`...)
		b = message.AppendJSONString(b, BytesToString(it.m.Data))
		b = append(b, '}')
	}
	var hdr [maxFrameHeader]byte
	h := appendTextFrameHeader(hdr[:0], len(b)-p)
	n := copy(b[start:], h)
	return b[:start+n+copy(b[start+n:], b[p:])]
}
