package message

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// MySQLStats counts what a MySQLLogger did since it started.
type MySQLStats struct {
	Batches        uint64 // insert batches committed
	Rows           uint64 // rows inserted
	FailedBatches  uint64 // insert batches that failed (their Log calls got an error)
	UpdatesWritten uint64 // status updates written
	UpdatesDropped uint64 // status updates dropped: queue full, or after Close
}

type mysqlCounters struct {
	batches, rows, failedBatches, updatesWritten, updatesDropped atomic.Uint64
}

// Stats returns the logger's counters, for metrics.
func (l *MySQLLogger) Stats() MySQLStats {
	return MySQLStats{
		Batches:        l.stats.batches.Load(),
		Rows:           l.stats.rows.Load(),
		FailedBatches:  l.stats.failedBatches.Load(),
		UpdatesWritten: l.stats.updatesWritten.Load(),
		UpdatesDropped: l.stats.updatesDropped.Load(),
	}
}

// DroppedUpdates returns how many status updates were dropped because the
// queue was full (the database slower than deliveries, or down for long)
// or because they came after Close. Their rows keep their previous status.
func (l *MySQLLogger) DroppedUpdates() uint64 { return l.stats.updatesDropped.Load() }

// writeHealth remembers whether the last write failed, so that a failure
// and a recovery are each logged once rather than once per batch.
type writeHealth struct {
	mu      sync.Mutex
	last    error // nil while writes succeed
	failed  int   // batches failed since the last success
	failing time.Time
}

func (h *writeHealth) lastError() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// record notes the result of a write, and logs a change of state.
func (h *writeHealth) record(log *slog.Logger, what string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case err == nil && h.last != nil:
		log.Info("mysql writes recovered", "what", what, "failed_writes", h.failed, "outage", time.Since(h.failing).Round(time.Millisecond))
		h.last, h.failed = nil, 0
	case err != nil && h.last == nil:
		log.Warn("mysql write failed", "what", what, "err", err)
		h.last, h.failed, h.failing = err, 1, time.Now()
	case err != nil:
		h.last = err
		h.failed++
	}
}

// driverLogger sends the driver's own complaints (a connection closed
// under it, say) to our structured log instead of its default stderr. At
// debug level: during an outage it says the same thing once per
// connection, while writeHealth logs the outage once with its cause.
type driverLogger struct {
	log    *slog.Logger
	redact redactor
}

func (d driverLogger) Print(v ...any) {
	d.log.Debug("mysql driver", "msg", d.redact.str(fmt.Sprint(v...)))
}
