package message

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"
)

// The life of a logRequest: waiting until either its writer settles it
// (and sends the result on done) or its Log call gives up (abandoned).
// Whoever moves it out of waiting first decides what Log returns.
const (
	reqWaiting int32 = iota
	reqSettled
	reqAbandoned
)

// logRequest is one Log call waiting for its rows to be committed: the
// rows of all its messages commit together or not at all.
type logRequest struct {
	ms       []logEntry
	rows     int        // rows of all ms
	deadline time.Time  // Log's deadline; zero if none
	done     chan error // buffered: the writer never waits for Log
	state    atomic.Int32
}

// logEntry is one message of a logRequest.
type logEntry struct {
	Log
	at      time.Time // created_at, UTC
	msgSize int       // len of the message quoted and escaped
}

// Column limits of db_logs (see createTable).
const (
	maxIDLen      = 20
	maxUIDBytes   = 128
	maxMessageLen = 16<<20 - 1 // MEDIUMTEXT
)

// newRequest checks ms before they can join a batch: a row the database
// would refuse would fail the whole batch, and with it the messages of
// other senders.
func (l *MySQLLogger) newRequest(ms []Log) (*logRequest, error) {
	r := &logRequest{ms: make([]logEntry, 0, len(ms)), done: make(chan error, 1)}
	for _, m := range ms {
		e, err := l.newEntry(m)
		if err != nil {
			return nil, err
		}
		r.ms = append(r.ms, e)
		r.rows += len(m.UIDs)
	}
	return r, nil
}

func (l *MySQLLogger) newEntry(m Log) (logEntry, error) {
	if err := checkID(m.ID); err != nil {
		return logEntry{}, fmt.Errorf("mysql message log: id %q %w", m.ID, err)
	}
	for _, uid := range m.UIDs {
		if uid == "" || len(uid) > maxUIDBytes || !utf8.ValidString(uid) {
			return logEntry{}, fmt.Errorf("mysql message log: uid %q: want 1 to %d bytes of UTF-8", uid, maxUIDBytes)
		}
	}
	if len(m.Message) > maxMessageLen || !utf8.ValidString(m.Message) {
		return logEntry{}, fmt.Errorf("mysql message log: message: want at most %d bytes of UTF-8", maxMessageLen)
	}
	at := m.Time
	if at.IsZero() {
		at = time.Now()
	}
	// The column keeps milliseconds; MariaDB truncates and MySQL rounds.
	e := logEntry{Log: m, at: at.UTC().Truncate(time.Millisecond), msgSize: quotedLen(m.Message)}
	for _, uid := range m.UIDs {
		if n := e.rowSize(uid); len(insertPrefix)+n > l.maxStmt {
			return logEntry{}, fmt.Errorf("mysql message log: a row of %d bytes does not fit in max_allowed_packet (%d): raise it on the server", n, l.maxStmt+stmtSlack)
		}
	}
	return e, nil
}

// checkID accepts what msgid.go makes, and any short id of letters,
// digits, - and _ (the column is ASCII and pads with spaces).
func checkID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("must have 1 to %d characters", maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return errors.New("may hold only letters, digits, - and _")
		}
	}
	return nil
}

// insertBatch is the requests one writer commits together.
type insertBatch struct {
	reqs     []*logRequest
	rows     int
	deadline time.Time // the latest deadline of its requests; zero if one has none
	noLimit  bool      // a request without deadline joined
}

func (b *insertBatch) add(r *logRequest) {
	b.reqs = append(b.reqs, r)
	b.rows += r.rows
	switch {
	case r.deadline.IsZero():
		b.noLimit = true
	case r.deadline.After(b.deadline):
		b.deadline = r.deadline
	}
}

// collect forms batches from Log calls and hands them to the writers: a
// batch closes at BatchSize rows or BatchInterval after its first row.
// While every writer is busy, closed batches wait in ready, and the last
// one keeps taking rows up to BatchSize: that is the group commit. Once
// Writers batches wait, collect stops taking requests, so Log calls wait
// (bounded by their ctx) instead of memory growing.
func (l *MySQLLogger) collect() {
	defer close(l.batches)
	var (
		open   *insertBatch
		ready  []*insertBatch
		timer  = time.NewTimer(time.Hour)
		timerC <-chan time.Time
	)
	timer.Stop()
	closeOpen := func() {
		ready = append(ready, open)
		open, timerC = nil, nil
		timer.Stop()
	}
	for {
		var out chan<- *insertBatch
		var head *insertBatch
		if len(ready) > 0 {
			out, head = l.batches, ready[0]
		}
		in := l.reqs
		if len(ready) >= l.cfg.Writers {
			in = nil
		}
		select {
		case r := <-in:
			if last := len(ready) - 1; open == nil && last >= 0 && ready[last].rows < l.cfg.BatchSize {
				ready[last].add(r)
				continue
			}
			if open == nil {
				open = &insertBatch{}
				timer.Reset(l.cfg.BatchInterval)
				timerC = timer.C
			}
			open.add(r)
			if open.rows >= l.cfg.BatchSize {
				closeOpen()
			}
		case <-timerC:
			closeOpen()
		case out <- head:
			ready[0] = nil
			ready = ready[1:]
		case <-l.stopping:
			// Nothing can join now: Log sees stopping too. Flush what was taken.
			if open != nil {
				closeOpen()
			}
			for _, b := range ready {
				l.batches <- b
			}
			return
		}
	}
}

// writeBatch commits b and settles its requests.
func (l *MySQLLogger) writeBatch(b *insertBatch) {
	live := b.reqs[:0]
	for _, r := range b.reqs {
		// An abandoned request stays abandoned: nothing waits for its rows.
		if r.state.Load() != reqAbandoned {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return
	}
	timeout := l.cfg.WriteTimeout
	if !b.noLimit {
		timeout = min(timeout, time.Until(b.deadline))
	}
	ctx, cancel := context.WithTimeout(l.ctx, timeout)
	err := l.execInserts(ctx, l.buildInserts(live))
	cancel()
	l.settle(live, err)
}

// settle tells each request of a written batch its result err, and keeps
// the log truthful about what was not pushed: a Log that returns an error
// must not leave a row that looks queued for delivery. If the rows may
// have been committed (the connection broke mid-statement), or were
// committed after Log gave up, they are marked failed. Where no row
// exists the update changes nothing.
func (l *MySQLLogger) settle(reqs []*logRequest, err error) {
	rows := 0
	for _, r := range reqs {
		rows += r.rows
	}
	if err != nil {
		err = l.redact.err(fmt.Errorf("mysql %s: insert %d rows: %w", l.target, rows, err))
		l.stats.failedBatches.Add(1)
	} else {
		l.stats.batches.Add(1)
		l.stats.rows.Add(uint64(rows))
	}
	l.insertHealth.record(l.log, "insert", err)
	maybeCommitted := err == nil || ambiguous(err)
	for _, r := range reqs {
		if r.state.CompareAndSwap(reqWaiting, reqSettled) {
			r.done <- err
			if err == nil || !maybeCommitted {
				continue
			}
		} else if !maybeCommitted {
			continue
		}
		for _, e := range r.ms {
			for _, uid := range e.UIDs {
				l.enqueueUpdate(statusUpdate{e.ID, uid, StatusFailed})
			}
		}
	}
}

// ambiguous reports whether a failed write may have committed anyway: the
// server refused it (a MySQL error) or it never reached a server (a dial
// error) are the cases where it surely did not.
func ambiguous(err error) bool {
	var me *mysql.MySQLError
	var op *net.OpError
	switch {
	case errors.As(err, &me):
		return false
	case errors.As(err, &op) && op.Op == "dial":
		return false
	}
	return true
}
