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
//
// Lines of concurrent calls share one write (group commit): the first
// caller writes its line and every line appended while an earlier write
// was in flight, the others wait for that write. A write per message
// would cost a system call per /send.
type StdoutLogger struct {
	w io.Writer

	mu      sync.Mutex
	cond    sync.Cond    // signalled when a batch is written
	cur     *stdoutBatch // lines waiting for the next write
	writing bool         // a caller is writing a batch
	spare   []byte       // a written batch's buffer, for reuse
}

// stdoutBatch is the lines of one write, and its outcome.
type stdoutBatch struct {
	buf  []byte
	done bool
	err  error
}

var _ Logger = (*StdoutLogger)(nil)

// NewStdoutLogger returns a logger writing to w (os.Stdout in the server).
func NewStdoutLogger(w io.Writer) *StdoutLogger {
	l := &StdoutLogger{w: w}
	l.cond.L = &l.mu
	return l
}

// Log implements Logger. It returns after the line was handed to w; a
// write error (a closed pipe, a full disk) is returned so that /send
// refuses the message instead of pushing it unlogged.
func (l *StdoutLogger) Log(_ context.Context, m Log) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		l.cur = &stdoutBatch{buf: l.spare[:0]}
		l.spare = nil
	}
	mine := l.cur
	mine.buf = AppendLine(mine.buf, m)
	for !mine.done {
		if l.writing {
			l.cond.Wait()
			continue
		}
		// Write the pending batch, which holds this line.
		b := l.cur
		l.cur, l.writing = nil, true
		l.mu.Unlock()
		_, err := l.w.Write(b.buf)
		l.mu.Lock()
		l.writing, b.done = false, true
		if err != nil {
			b.err = fmt.Errorf("write message log: %w", err)
		}
		if cap(b.buf) <= 64<<10 {
			l.spare = b.buf[:0] // keep a modest buffer, not a huge one
		}
		b.buf = nil
		l.cond.Broadcast()
	}
	return mine.err
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
	b = AppendJSONString(b, m.ID)
	if len(m.UIDs) == 1 {
		b = append(b, `,"uid":`...)
		b = AppendJSONString(b, m.UIDs[0])
	} else {
		b = append(b, `,"uids":[`...)
		for i, uid := range m.UIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendJSONString(b, uid)
		}
		b = append(b, ']')
	}
	b = append(b, `,"message":`...)
	b = AppendJSONString(b, m.Message)
	return append(b, "}\n"...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Invalid UTF-8 (which /send
// refuses before it gets here) would be written as U+FFFD, so the line is
// always valid JSON.
func AppendJSONString(b []byte, s string) []byte {
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
