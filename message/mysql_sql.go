package message

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// stmt is one SQL statement and its arguments.
type stmt struct {
	query string
	args  []any
}

const (
	updateHead   = "UPDATE db_logs d JOIN ("
	updateFirst  = "SELECT ? AS id, ? AS uid"
	updateRow    = " UNION ALL SELECT ?, ?"
	insertPrefix = "INSERT INTO db_logs (id, uid, message, status, created_at, updated_at) VALUES "
	insertRow    = "(?,?,?,0,?,?)"
	// quotedTimeLen is a DATETIME(6) as the driver writes it: '2006-01-02 15:04:05.999999'.
	quotedTimeLen = 28
	// stmtSlack is room left in max_allowed_packet for the packet header
	// and rounding: a statement is at most max_allowed_packet - stmtSlack.
	stmtSlack = 1024
)

// rowSize is the length of one row of e in the INSERT text, as the
// driver writes it with the arguments quoted and escaped.
func (e *logEntry) rowSize(uid string) int {
	return len(insertRow) + 1 + quotedLen(e.ID) + quotedLen(uid) + e.msgSize + 2*quotedTimeLen
}

// maxRowSize is an upper bound of rowSize for a message of n bytes.
func maxRowSize(n int) int {
	return len(insertRow) + 1 + 2*maxIDLen + 2 + 2*maxUIDBytes + 2 + 2*n + 2 + 2*quotedTimeLen
}

// quotedLen is the length of s as the driver interpolates it: quoted, and
// each of NUL, \n, \r, \x1a, ', " and \ escaped with a backslash. With
// NO_BACKSLASH_ESCAPES only ' is doubled, which is never longer.
func quotedLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case 0, '\n', '\r', 0x1a, '\'', '"', '\\':
			n++
		}
	}
	return n
}

// buildInserts turns reqs into multi-row INSERTs of at most BatchSize
// rows and at most maxStmt bytes each, so that a batch of large messages
// is split rather than refused by max_allowed_packet.
func (l *MySQLLogger) buildInserts(reqs []*logRequest) []stmt {
	var stmts []stmt
	var q strings.Builder
	var args []any
	rows, size := 0, 0
	flush := func() {
		if rows > 0 {
			stmts = append(stmts, stmt{q.String(), args})
		}
		q.Reset()
		args, rows, size = nil, 0, len(insertPrefix)
	}
	flush()
	for _, r := range reqs {
		for i := range r.ms {
			e := &r.ms[i]
			for _, uid := range e.UIDs {
				n := e.rowSize(uid)
				if rows > 0 && (rows >= l.cfg.BatchSize || size+n > l.maxStmt) {
					flush()
				}
				if rows == 0 {
					q.WriteString(insertPrefix)
				} else {
					q.WriteByte(',')
				}
				q.WriteString(insertRow)
				args = append(args, e.ID, uid, e.Message, e.at, e.at)
				rows++
				size += n
			}
		}
	}
	flush()
	return stmts
}

// execInserts runs stmts: one statement commits by itself; several run
// in one transaction, so that a batch commits whole or not at all.
func (l *MySQLLogger) execInserts(ctx context.Context, stmts []stmt) error {
	if len(stmts) == 1 {
		_, err := l.db.ExecContext(ctx, stmts[0].query, stmts[0].args...)
		return err
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	for i, s := range stmts {
		if _, err := tx.ExecContext(ctx, s.query, s.args...); err != nil {
			// The error that matters is the statement's; a failed rollback
			// leaves nothing committed either.
			_ = tx.Rollback()
			return fmt.Errorf("statement %d of %d: %w", i+1, len(stmts), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// buildUpdates turns keys (id, uid pairs) into UPDATE statements that set
// status where the row's status matches when, each at most UpdateBatchSize rows
// and maxStmt bytes. The keys are joined as a derived table: MariaDB
// plans "(id, uid) IN ((?,?), ...)" with its range optimizer, which costs
// about 10 times as much for a few hundred pairs as these primary-key
// lookups do. UNION ALL rather than VALUES, whose syntax MySQL and
// MariaDB do not share.
func (l *MySQLLogger) buildUpdates(set Status, when string, now time.Time, keys []any) []stmt {
	tail := fmt.Sprintf(") v ON d.id = v.id AND d.uid = v.uid SET d.status = %d, d.updated_at = ? WHERE %s", set, when)
	var stmts []stmt
	var q strings.Builder
	var args []any
	size, rows := 0, 0
	flush := func() {
		if rows > 0 {
			q.WriteString(tail)
			stmts = append(stmts, stmt{q.String(), append(args, now)})
		}
		q.Reset()
		args, rows, size = nil, 0, len(updateHead)+len(tail)+quotedTimeLen
	}
	flush()
	for i := 0; i < len(keys); i += 2 {
		n := max(len(updateFirst), len(updateRow)) + quotedLen(keys[i].(string)) + quotedLen(keys[i+1].(string))
		if rows > 0 && (rows >= l.cfg.UpdateBatchSize || size+n > l.maxStmt) {
			flush()
		}
		if rows == 0 {
			q.WriteString(updateHead)
			q.WriteString(updateFirst)
		} else {
			q.WriteString(updateRow)
		}
		args = append(args, keys[i], keys[i+1])
		rows++
		size += n
	}
	flush()
	return stmts
}
