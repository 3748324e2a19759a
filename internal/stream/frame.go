package stream

import (
	"encoding/binary"
	"strconv"
	"strings"
)

// MaxControlPayload is the most a control frame (ping, pong, close) may
// carry.
const MaxControlPayload = 125

// maxCloseReason is the most a close frame's reason may hold: two of the
// control frame's bytes are the code.
const maxCloseReason = MaxControlPayload - 2

// AppendControlFrame appends a ping or pong frame carrying payload, cut
// to MaxControlPayload.
func AppendControlFrame(b []byte, op byte, payload string) []byte {
	if len(payload) > MaxControlPayload {
		payload = payload[:MaxControlPayload]
	}
	return append(AppendFrameHeader(b, op, len(payload)), payload...)
}

// AppendCloseFrame appends a close frame with code and reason, the reason
// cut to fit on a rune boundary. Code 1005 (no status) is sent as an
// empty close frame, as RFC 6455 section 7.4.1 requires.
func AppendCloseFrame(b []byte, code int, reason string) []byte {
	var p [MaxControlPayload]byte
	payload := AppendClosePayload(p[:0], code, reason)
	return append(AppendFrameHeader(b, OpClose, len(payload)), payload...)
}

// AppendClosePayload appends the payload of a close frame: code and
// reason, as AppendCloseFrame writes them.
func AppendClosePayload(b []byte, code int, reason string) []byte {
	const noStatus = 1005
	if code == noStatus {
		return b
	}
	if len(reason) > maxCloseReason {
		reason = strings.ToValidUTF8(reason[:maxCloseReason], "")
	}
	b = binary.BigEndian.AppendUint16(b, uint16(code))
	return append(b, reason...)
}

// AppendJSONFrame appends it as the text frame of a format=json connection:
//
//	{"id":"<message id>","offset":"<epoch>:<n>","message":"<message>"}
//
// or, for a control item, its payload as it is. The payload is written
// after room for the longest header, then moved next to the header once
// its length is known.
func AppendJSONFrame(b []byte, it Item) []byte {
	start := len(b)
	b = append(b, make([]byte, MaxFrameHeader)...)
	p := len(b)
	if it.Ctl {
		b = append(b, it.M.Data...)
	} else {
		b = append(b, `{"id":`...)
		b = AppendJSONString(b, it.M.ID)
		b = append(b, `,"offset":"`...)
		b = append(b, it.Epoch...)
		b = append(b, ':')
		b = strconv.AppendUint(b, it.Off, 10)
		b = append(b, `","message":`...)
		b = AppendJSONString(b, unsafeString(it.M.Data))
		b = append(b, '}')
	}
	var hdr [MaxFrameHeader]byte
	h := AppendTextFrameHeader(hdr[:0], len(b)-p)
	n := copy(b[start:], h)
	return b[:start+n+copy(b[start+n:], b[p:])]
}
