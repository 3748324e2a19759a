package message

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unicode/utf8"
)

// StdoutLogger writes the article's line for every accepted message:
//
//	send message: {"id":"...","uid":"u1","message":"hi"}
//
// A multicast gets one line with "uids" instead of "uid". Delivery status
// is not written: the line is the record of the message.
//
// Lines of concurrent calls share one write (group commit): a writer
// goroutine writes every line appended while its previous write was in
// flight. A write per message would cost a system call per /send. Each
// call waits at most the logger's timeout: a stdout nobody reads (a stuck
// log shipper) makes /send answer 503 instead of hanging.
type StdoutLogger struct {
	w       io.Writer
	timeout time.Duration

	mu    sync.Mutex
	cur   *stdoutBatch // lines waiting for the next write
	spare []byte       // a written batch's buffer, for reuse

	kick chan struct{} // wakes the writer; capacity 1
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// stdoutBatch is the lines of one write, and its outcome.
type stdoutBatch struct {
	buf     []byte
	done    chan struct{} // closed after the write
	err     error
	expired chan struct{} // closed timeout after the batch began
	timer   *time.Timer
}

var _ Logger = (*StdoutLogger)(nil)

// isExpired reports whether the batch's timeout has passed.
func (b *stdoutBatch) isExpired() bool {
	if b.expired == nil {
		return false
	}
	select {
	case <-b.expired:
		return true
	default:
		return false
	}
}

// NewStdoutLogger returns a logger writing to w (os.Stdout in the server)
// whose Log calls wait at most timeout (0: as long as the write takes).
// Close stops its writer goroutine.
func NewStdoutLogger(w io.Writer, timeout time.Duration) *StdoutLogger {
	l := &StdoutLogger{w: w, timeout: timeout, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	return l
}

// Log implements Logger. It returns after the line was handed to w; a
// write error (a closed pipe, a full disk) or the timeout is returned so
// that /send refuses the message instead of pushing it unlogged.
func (l *StdoutLogger) Log(ctx context.Context, m Log) error {
	l.mu.Lock()
	b := l.cur
	if b != nil && b.isExpired() {
		// stdout has taken nothing for the whole timeout: refuse at once
		// rather than pile more lines behind it.
		l.mu.Unlock()
		return fmt.Errorf("write message log: no answer in %s", l.timeout)
	}
	if b == nil {
		b = &stdoutBatch{buf: l.spare[:0], done: make(chan struct{})}
		l.spare = nil
		if l.timeout > 0 {
			b.expired = make(chan struct{})
			b.timer = time.AfterFunc(l.timeout, func() { close(b.expired) })
		}
		l.cur = b
	}
	b.buf = AppendLine(b.buf, m)
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default: // the writer is awake already
	}
	select {
	case <-b.done:
		return b.err
	default:
	}
	select {
	case <-b.done:
		return b.err
	case <-b.expired: // nil without a timeout: never
		return fmt.Errorf("write message log: no answer in %s", l.timeout)
	case <-ctx.Done():
		return fmt.Errorf("write message log: %w", ctx.Err())
	case <-l.done:
		return errors.New("write message log: closed")
	}
}

// run is the writer goroutine: it writes the pending batch whenever
// kicked, until Close.
func (l *StdoutLogger) run() {
	defer close(l.done)
	for {
		select {
		case <-l.kick:
			l.flush()
		case <-l.stop:
			l.flush()
			return
		}
	}
}

func (l *StdoutLogger) flush() {
	l.mu.Lock()
	b := l.cur
	l.cur = nil
	l.mu.Unlock()
	if b == nil {
		return
	}
	if b.isExpired() {
		// Its callers were told the message was not logged (and it was
		// not pushed): writing the lines now would log refused messages.
		b.err = fmt.Errorf("write message log: no answer in %s", l.timeout)
	} else if _, err := l.w.Write(b.buf); err != nil {
		b.err = fmt.Errorf("write message log: %w", err)
	}
	if b.timer != nil {
		b.timer.Stop()
	}
	close(b.done)
	if cap(b.buf) <= 64<<10 {
		l.mu.Lock()
		l.spare = b.buf[:0] // keep a modest buffer, not a huge one
		l.mu.Unlock()
	}
}

// Update implements Logger; the stdout log records messages only.
func (l *StdoutLogger) Update(string, string, Status) {}

// Ready implements Logger.
func (l *StdoutLogger) Ready(context.Context) error { return nil }

// Close implements Logger: it writes what is pending and stops the writer,
// or gives up when ctx ends (a stdout nobody reads).
func (l *StdoutLogger) Close(ctx context.Context) error {
	l.once.Do(func() { close(l.stop) })
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush message log: %w", ctx.Err())
	}
}

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
