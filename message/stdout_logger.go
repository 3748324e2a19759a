package message

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go-pusher/internal/stream"
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
// call waits at most about the logger's timeout: a stdout nobody reads (a
// stuck log shipper) makes /send answer 503 instead of hanging.
//
// One watchdog timer, armed for each write, bounds the wait: a write still
// under way at its batch's deadline marks the logger stuck, which fails
// every waiting call and refuses new ones at once until stdout moves
// again. (A timer and two channels per batch cost a seventh of the bytes
// a /send allocated.)
//
// When stdout is a regular file (the server run as ./go-pusher >log), a
// call that finds no write under way writes its line itself instead of
// handing it to the writer goroutine: a file has no reader to stall it,
// and the handoff (a wakeup each way) cost 4-9% of the unicast
// deliveries per server CPU-second. Lines appended during that write go
// to the writer goroutine as before. Only the writing call itself waits
// as long as the disk takes; the others keep the timeout.
type StdoutLogger struct {
	w       io.Writer
	timeout time.Duration
	direct  bool // w is a regular file: a call may write its own line

	// wmu is held by whoever writes: the writer goroutine, or with
	// direct a Log call that found no write under way (TryLock).
	wmu     sync.Mutex
	inPlace atomic.Uint64 // writes made by Log calls (tests look)

	mu       sync.Mutex
	cur      *stdoutBatch  // lines waiting for the next write
	spare    []byte        // a written batch's buffer, for reuse
	writing  bool          // a write is under way
	deadline time.Time     // its batch's: the watchdog fires at it
	closing  bool          // Close was called: Log refuses
	isStuck  bool          // the write passed its deadline
	stuck    chan struct{} // closed when isStuck is set; renewed after
	watchdog *time.Timer   // nil without a timeout

	kick chan struct{} // wakes the writer; capacity 1
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// stdoutBatch is the lines of one write, and its outcome.
type stdoutBatch struct {
	buf      []byte
	deadline time.Time     // when its first caller stops waiting
	done     chan struct{} // closed after the write, or on giving up
	err      error
}

var _ Logger = (*StdoutLogger)(nil)

// NewStdoutLogger returns a logger writing to w (os.Stdout in the server)
// whose Log calls wait at most timeout (0: as long as the write takes).
// Close stops its writer goroutine.
func NewStdoutLogger(w io.Writer, timeout time.Duration) *StdoutLogger {
	l := &StdoutLogger{
		w: w, timeout: timeout, direct: isRegularFile(w), stuck: make(chan struct{}),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if timeout > 0 {
		l.watchdog = time.AfterFunc(time.Hour, l.expire)
		l.watchdog.Stop()
	}
	go l.run()
	return l
}

func (l *StdoutLogger) timeoutErr() error {
	return fmt.Errorf("write message log: no answer in %s", l.timeout)
}

// Log implements Logger. It returns after the lines of ms were handed to
// w, in one write; a write error (a closed pipe, a full disk) or the
// timeout is returned so that /send refuses the messages instead of
// pushing them unlogged.
func (l *StdoutLogger) Log(ctx context.Context, ms ...Log) error {
	l.mu.Lock()
	if l.closing {
		// After Close's last flush nobody would write the line (with
		// direct, a later call could, after its caller was told no).
		l.mu.Unlock()
		return errors.New("write message log: closed")
	}
	if l.isStuck {
		// stdout has taken nothing for the whole timeout: refuse at once
		// rather than pile more lines behind it.
		l.mu.Unlock()
		return l.timeoutErr()
	}
	b := l.cur
	if b == nil {
		b = &stdoutBatch{buf: l.spare[:0], done: make(chan struct{})}
		if l.timeout > 0 {
			b.deadline = time.Now().Add(l.timeout)
		}
		l.spare = nil
		l.cur = b
	}
	for _, m := range ms {
		b.buf = AppendLine(b.buf, m)
	}
	stuck := l.stuck
	if l.timeout == 0 {
		stuck = nil // never
	}
	l.mu.Unlock()
	if l.direct && l.wmu.TryLock() {
		l.inPlace.Add(1)
		l.flushLocked() // b, and whatever joined it
		l.wmu.Unlock()
	} else {
		select {
		case l.kick <- struct{}{}:
		default: // the writer is awake already
		}
	}
	select {
	case <-b.done:
		return b.err
	default:
	}
	select {
	case <-b.done:
		return b.err
	case <-stuck:
		return l.timeoutErr()
	case <-ctx.Done():
		return fmt.Errorf("write message log: %w", ctx.Err())
	case <-l.done:
		return errors.New("write message log: closed")
	}
}

// expire is the watchdog: the write under way has passed its batch's
// deadline. A late run of an earlier arming finds a later deadline and
// does nothing.
func (l *StdoutLogger) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.writing && !l.isStuck && !time.Now().Before(l.deadline) {
		l.isStuck = true
		close(l.stuck)
	}
}

// isRegularFile reports whether w is an *os.File open on a regular file.
func isRegularFile(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode().IsRegular()
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
			if l.watchdog != nil {
				l.watchdog.Stop()
			}
			return
		}
	}
}

// flush writes the pending batch, after the write under way.
func (l *StdoutLogger) flush() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.flushLocked()
}

// flushLocked writes the pending batch; the caller holds wmu.
func (l *StdoutLogger) flushLocked() {
	l.mu.Lock()
	b := l.cur
	if b == nil {
		l.mu.Unlock()
		return
	}
	l.cur = nil
	if l.timeout > 0 && !time.Now().Before(b.deadline) {
		// Its callers' wait is over (the previous write took long):
		// writing the lines now could log refused messages.
		l.mu.Unlock()
		b.err = l.timeoutErr()
		close(b.done)
		return
	}
	l.writing, l.deadline = true, b.deadline
	l.mu.Unlock()
	if l.watchdog != nil {
		l.watchdog.Reset(time.Until(b.deadline))
	}
	_, err := l.w.Write(b.buf)
	if l.watchdog != nil {
		l.watchdog.Stop()
	}

	l.mu.Lock()
	l.writing = false
	var refused *stdoutBatch
	if l.isStuck {
		// stdout moved again. The lines appended meanwhile belong to
		// calls that were told no: they are not written.
		refused, l.cur = l.cur, nil
		l.isStuck, l.stuck = false, make(chan struct{})
	}
	if cap(b.buf) <= 64<<10 {
		l.spare = b.buf[:0] // keep a modest buffer, not a huge one
	}
	l.mu.Unlock()

	if err != nil {
		b.err = fmt.Errorf("write message log: %w", err)
	}
	close(b.done) // callers that gave up already do not look
	if refused != nil {
		refused.err = l.timeoutErr()
		close(refused.done)
	}
}

// Update implements Logger; the stdout log records messages only.
func (l *StdoutLogger) Update(string, string, Status) {}

// Ready implements Logger.
func (l *StdoutLogger) Ready(context.Context) error { return nil }

// Close implements Logger: it writes what is pending and stops the writer,
// or gives up when ctx ends (a stdout nobody reads).
func (l *StdoutLogger) Close(ctx context.Context) error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closing = true
		l.mu.Unlock()
		close(l.stop)
	})
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
	b = stream.AppendJSONString(b, m.ID)
	if len(m.UIDs) == 1 {
		b = append(b, `,"uid":`...)
		b = stream.AppendJSONString(b, m.UIDs[0])
	} else {
		b = append(b, `,"uids":[`...)
		for i, uid := range m.UIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = stream.AppendJSONString(b, uid)
		}
		b = append(b, ']')
	}
	b = append(b, `,"message":`...)
	b = stream.AppendJSONString(b, m.Message)
	return append(b, "}\n"...)
}
