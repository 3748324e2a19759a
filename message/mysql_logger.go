package message

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MySQLConfig configures a MySQLLogger. Zero values take the defaults
// stated on each field.
type MySQLConfig struct {
	// DSN is a go-sql-driver DSN naming the database that holds db_logs.
	DSN string
	// BatchSize is the most rows one INSERT carries: a batch is written
	// when it holds this many rows or when BatchInterval has passed since
	// its first row, whichever comes first. Default 256.
	BatchSize int
	// BatchInterval is the longest a row waits for its batch to fill.
	// It is the most a lone /send pays for group commit; under load batches
	// fill sooner. Default 1ms: with 64 concurrent senders 2ms cost about a tenth
	// of the throughput, and 0.5ms gained nothing over 1ms.
	BatchInterval time.Duration
	// Writers is how many batches are written at once, so that one batch
	// fills while others commit. Default 4.
	Writers int
	// UpdateInterval is the longest a status update waits for its batch to
	// fill, and UpdateBatchSize the most updates one batch holds. Statuses
	// are on no caller's path, so they wait longer than rows and go in
	// fewer, larger statements, which costs the database less per row.
	// Defaults 100ms and 1024.
	UpdateInterval  time.Duration
	UpdateBatchSize int
	// UpdateQueue is how many status updates may wait to be written;
	// beyond it Update drops them (see DroppedUpdates). Default 65536.
	UpdateQueue int
	// WriteTimeout caps one batch write. A batch also stops when every
	// Log waiting for it has given up. Default 10s.
	WriteTimeout time.Duration
	// LogTimeout bounds each Log call, on top of its context's deadline:
	// the server's -message-log-timeout. 0: only the context bounds it.
	LogTimeout time.Duration
	// MaxMessageSize is the largest message the server accepts; at start
	// a warning is logged if max_allowed_packet cannot carry it. 0: no check.
	MaxMessageSize int
}

// The defaults of MySQLConfig.
const (
	DefaultMySQLBatchSize     = 256
	DefaultMySQLBatchInterval = time.Millisecond
	defaultMySQLWriters       = 4
	defaultMySQLUpdateQueue   = 1 << 16
	defaultMySQLUpdateWait    = 100 * time.Millisecond
	defaultMySQLUpdateBatch   = 1024
	defaultMySQLWriteTimeout  = 10 * time.Second
)

func (c *MySQLConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultMySQLBatchSize
	}
	if c.BatchInterval <= 0 {
		c.BatchInterval = DefaultMySQLBatchInterval
	}
	if c.Writers <= 0 {
		c.Writers = defaultMySQLWriters
	}
	if c.UpdateInterval <= 0 {
		c.UpdateInterval = defaultMySQLUpdateWait
	}
	if c.UpdateBatchSize <= 0 {
		c.UpdateBatchSize = defaultMySQLUpdateBatch
	}
	if c.UpdateQueue <= 0 {
		c.UpdateQueue = defaultMySQLUpdateQueue
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = defaultMySQLWriteTimeout
	}
}

// MySQLLogger records messages in the MySQL table db_logs, one row per
// (message id, uid), with group commit: concurrent Log calls share
// multi-row INSERTs, and status updates are written in batches from a
// bounded queue.
//
// Goroutines: one collector that forms insert batches, Writers writers
// that commit them, and one status writer. Close stops all of them.
type MySQLLogger struct {
	cfg    MySQLConfig
	log    *slog.Logger
	db     *sql.DB
	target string // user@net(addr)/db, for messages: never the password
	redact redactor

	// maxStmt is the largest INSERT or UPDATE we send, in bytes: the
	// server's max_allowed_packet less room for the packet header.
	maxStmt int

	// ctx is cancelled when Close's deadline passes, aborting writes.
	ctx    context.Context
	cancel context.CancelFunc

	reqs        chan *logRequest // unbuffered: a send succeeds only if the collector takes it
	batches     chan *insertBatch
	stopping    chan struct{} // closed by Close: Log refuses new messages
	insertsDone chan struct{} // closed when the collector and writers are gone
	updates     chan statusUpdate
	updStop     chan struct{} // closed by Close once inserts are flushed
	updDone     chan struct{} // closed when the status writer is gone

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	insertHealth writeHealth // what Log cites when the database is late
	updateHealth writeHealth
	stats        mysqlCounters
}

var _ Logger = (*MySQLLogger)(nil)

// NewMySQLLogger connects to cfg.DSN, creates db_logs if it is missing and
// starts the writers. ctx bounds the start-up checks. Errors name the
// problem (unparsable DSN, unreachable server, missing privilege) and
// never contain the password.
func NewMySQLLogger(ctx context.Context, cfg MySQLConfig, log *slog.Logger) (*MySQLLogger, error) {
	cfg.setDefaults()
	dcfg, err := parseMySQLDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	redact := redactor(dcfg.Passwd)
	target := describeDSN(dcfg)
	dcfg.Logger = driverLogger{log, redact}
	conn, err := mysql.NewConnector(dcfg)
	if err != nil {
		return nil, redact.err(fmt.Errorf("mysql %s: %w", target, err))
	}
	db := sql.OpenDB(conn)
	// Writers, the status writer and Ready each hold at most one.
	db.SetMaxOpenConns(cfg.Writers + 2)
	db.SetMaxIdleConns(cfg.Writers + 2)
	// The driver's README: close connections before a server or a
	// middlebox drops them as idle, which many do after 5 minutes.
	db.SetConnMaxLifetime(3 * time.Minute)

	maxPacket, err := prepareSchema(ctx, db, log, target)
	if err != nil {
		// The error that matters is prepareSchema's.
		_ = db.Close()
		return nil, redact.err(err)
	}
	l := &MySQLLogger{
		cfg:         cfg,
		log:         log,
		db:          db,
		target:      target,
		redact:      redact,
		maxStmt:     maxPacket - stmtSlack,
		reqs:        make(chan *logRequest),
		batches:     make(chan *insertBatch),
		stopping:    make(chan struct{}),
		insertsDone: make(chan struct{}),
		updates:     make(chan statusUpdate, cfg.UpdateQueue),
		updStop:     make(chan struct{}),
		updDone:     make(chan struct{}),
	}
	if cfg.MaxMessageSize > 0 && maxRowSize(cfg.MaxMessageSize) > l.maxStmt {
		log.Warn("mysql max_allowed_packet is too small for the largest message: such messages will be refused",
			"max_allowed_packet", maxPacket, "max_message_size", cfg.MaxMessageSize,
			"want_max_allowed_packet", maxRowSize(cfg.MaxMessageSize)+stmtSlack)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.start()
	log.Info("mysql message log ready", "target", target, "max_allowed_packet", maxPacket,
		"batch_size", cfg.BatchSize, "batch_interval", cfg.BatchInterval)
	return l, nil
}

// start runs the goroutines; Close stops them.
func (l *MySQLLogger) start() {
	var writers sync.WaitGroup
	for range l.cfg.Writers {
		writers.Go(func() {
			for b := range l.batches {
				l.writeBatch(b)
			}
		})
	}
	go func() {
		l.collect() // closes l.batches when it returns
		writers.Wait()
		close(l.insertsDone)
	}()
	go func() {
		defer close(l.updDone)
		l.runUpdates()
	}()
}

// Log implements Logger: it returns once the rows of ms, one per message
// and uid, are committed (in one transaction), or with an error when they
// cannot be within ctx. After an error no row of ms is left claiming it
// was pushed: a row committed nonetheless (the commit raced the deadline)
// is marked failed.
func (l *MySQLLogger) Log(ctx context.Context, ms ...Log) error {
	r, err := l.newRequest(ms)
	if err != nil {
		return err
	}
	if r.rows == 0 {
		return nil
	}
	if l.cfg.LogTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.cfg.LogTimeout)
		defer cancel()
	}
	if deadline, ok := ctx.Deadline(); ok {
		r.deadline = deadline
	}
	select {
	case l.reqs <- r:
	case <-l.stopping:
		return errors.New("mysql message log: closed")
	case <-ctx.Done():
		return l.waitError(ctx)
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqWaiting, reqAbandoned) {
			return l.waitError(ctx)
		}
		// A writer settled r first and is sending its result.
		return <-r.done
	}
}

// waitError is what Log returns when ctx ends first: ctx's error and the
// last write error, which says why the database did not answer in time.
func (l *MySQLLogger) waitError(ctx context.Context) error {
	if last := l.insertHealth.lastError(); last != nil {
		return fmt.Errorf("mysql message log: %w (last write error: %v)", ctx.Err(), last) //nolint:errorlint // ctx's error is the cause callers test for; the write error is context, and wrapping it too would change what errors.Is/As match
	}
	return fmt.Errorf("mysql message log: %w", ctx.Err())
}

// Ready implements Logger: nil when db_logs answers a query now.
func (l *MySQLLogger) Ready(ctx context.Context) error {
	if l.closed.Load() {
		return errors.New("mysql: closed")
	}
	if _, err := l.db.ExecContext(ctx, "SELECT 1 FROM db_logs LIMIT 0"); err != nil {
		return l.redact.err(fmt.Errorf("mysql %s: %w", l.target, err))
	}
	return nil
}

// Close implements Logger: it stops taking messages, commits every batch
// already taken, writes every queued status update, and closes the
// database. When ctx ends first, writes in flight are aborted (their Log
// calls get an error) and the unwritten status updates are counted as
// dropped. Every goroutine has ended when Close returns.
func (l *MySQLLogger) Close(ctx context.Context) error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.stopping)
		var errs []error
		if err := l.waitOrAbort(ctx, l.insertsDone); err != nil {
			errs = append(errs, fmt.Errorf("flush message rows: %w", err))
		}
		// Inserts first: a failed or abandoned batch queues status updates.
		close(l.updStop)
		if err := l.waitOrAbort(ctx, l.updDone); err != nil {
			errs = append(errs, fmt.Errorf("flush status updates: %w", err))
		}
		l.cancel()
		if err := l.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close database: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			l.closeErr = l.redact.err(fmt.Errorf("mysql message log: %w", err))
		}
	})
	return l.closeErr
}

// waitOrAbort waits for done; if ctx ends first it aborts every write in
// flight and then waits, which is quick because aborted writes return.
func (l *MySQLLogger) waitOrAbort(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		l.cancel()
		<-done
		return ctx.Err()
	}
}
