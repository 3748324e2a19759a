package message

import (
	"context"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"
)

// StdoutLogger writes the article's line for every accepted message:
//
//	send message: {"id":"...","uid":"u1","message":"hi"}
//
// A multicast gets one line with "uids" instead of "uid". Delivery status
// is not written: the line is the record of the message.
type StdoutLogger struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte // reused under mu
}

var _ Logger = (*StdoutLogger)(nil)

// NewStdoutLogger returns a logger writing to w (os.Stdout in the server).
func NewStdoutLogger(w io.Writer) *StdoutLogger {
	return &StdoutLogger{w: w}
}

// Log implements Logger. It returns after the line was handed to w; a
// write error (a closed pipe, a full disk) is returned so that /send
// refuses the message instead of pushing it unlogged.
func (l *StdoutLogger) Log(_ context.Context, m Log) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = AppendLine(l.buf[:0], m)
	if _, err := l.w.Write(l.buf); err != nil {
		return fmt.Errorf("write message log: %w", err)
	}
	return nil
}

// Update implements Logger; the stdout log records messages only.
func (l *StdoutLogger) Update(string, string, Status) {}

// Ready implements Logger.
func (l *StdoutLogger) Ready(context.Context) error { return nil }

// Close implements Logger. Writes are not buffered, so there is nothing
// to flush.
func (l *StdoutLogger) Close(context.Context) error { return nil }

// AppendLine appends m's log line, ending in a newline, to b.
func AppendLine(b []byte, m Log) []byte {
	b = append(b, `send message: {"id":`...)
	b = appendJSONString(b, m.ID)
	if len(m.UIDs) == 1 {
		b = append(b, `,"uid":`...)
		b = appendJSONString(b, m.UIDs[0])
	} else {
		b = append(b, `,"uids":[`...)
		for i, uid := range m.UIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, uid)
		}
		b = append(b, ']')
	}
	b = append(b, `,"message":`...)
	b = appendJSONString(b, m.Message)
	return append(b, "}\n"...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Invalid UTF-8 (which /send
// refuses before it gets here) would be written as U+FFFD, so the line is
// always valid JSON.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
