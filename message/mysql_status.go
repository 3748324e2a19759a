package message

import (
	"context"
	"fmt"
	"time"
)

// statusUpdate is one Update call waiting to be written.
type statusUpdate struct {
	id, uid string
	status  Status
}

// Retry pacing of a status batch while the database is down, and how
// often dropped updates are reported.
const (
	minUpdateRetry = 100 * time.Millisecond
	maxUpdateRetry = 5 * time.Second
	dropReportGap  = 10 * time.Second
)

// Update implements Logger. It never blocks: the update joins a bounded
// queue that one goroutine writes in batches. When the queue is full (the
// database is down or slower than deliveries) the update is dropped and
// counted (DroppedUpdates); its row keeps the status it had, queued in
// the worst case, which then reads as "outcome unknown". StatusQueued is
// what every row starts as, so it needs no write.
func (l *MySQLLogger) Update(id, uid string, s Status) {
	if s != StatusDelivered && s != StatusFailed {
		return
	}
	if l.closed.Load() {
		l.stats.updatesDropped.Add(1)
		return
	}
	l.enqueueUpdate(statusUpdate{id, uid, s})
}

func (l *MySQLLogger) enqueueUpdate(u statusUpdate) {
	select {
	case l.updates <- u:
	default:
		l.stats.updatesDropped.Add(1)
	}
}

// runUpdates writes queued status updates: a batch is written at
// UpdateBatchSize updates or UpdateInterval after its first one. A batch that
// fails is retried (the updates are idempotent) until it is written or
// Close gives up; meanwhile new updates wait in the queue. After Close
// it writes everything still queued, then returns.
func (l *MySQLLogger) runUpdates() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var batch []statusUpdate
	var reported uint64
	var lastReport time.Time
	for {
		select {
		case u := <-l.updates:
			batch = append(batch[:0], u)
		case <-l.updStop:
			l.drainUpdates()
			if n := l.stats.updatesDropped.Load(); n > reported {
				l.log.Warn("mysql status updates dropped", "dropped_total", n)
			}
			return
		}
		timer.Reset(l.cfg.UpdateInterval)
	fill:
		for len(batch) < l.cfg.UpdateBatchSize {
			select {
			case u := <-l.updates:
				batch = append(batch, u)
			case <-timer.C:
				break fill
			case <-l.updStop:
				break fill
			}
		}
		timer.Stop()
		l.writeUpdatesRetrying(batch)
		if n := l.stats.updatesDropped.Load(); n > reported && time.Since(lastReport) >= dropReportGap {
			l.log.Warn("mysql status updates dropped: the queue was full", "dropped", n-reported,
				"dropped_total", n, "queue", l.cfg.UpdateQueue)
			reported, lastReport = n, time.Now()
		}
	}
}

// drainUpdates writes what is queued, in batches, after Close began.
func (l *MySQLLogger) drainUpdates() {
	batch := make([]statusUpdate, 0, l.cfg.UpdateBatchSize)
	for {
		batch = batch[:0]
	take:
		for len(batch) < l.cfg.UpdateBatchSize {
			select {
			case u := <-l.updates:
				batch = append(batch, u)
			default:
				break take
			}
		}
		if len(batch) == 0 {
			return
		}
		l.writeUpdatesRetrying(batch)
	}
}

// writeUpdatesRetrying writes batch, retrying with backoff while the
// database fails, until it succeeds or Close's deadline aborts it (then
// the batch counts as dropped).
func (l *MySQLLogger) writeUpdatesRetrying(batch []statusUpdate) {
	wait := minUpdateRetry
	for {
		ctx, cancel := context.WithTimeout(l.ctx, l.cfg.WriteTimeout)
		n, err := l.writeUpdates(ctx, batch)
		cancel()
		if err != nil {
			err = l.redact.err(fmt.Errorf("mysql %s: update status of %d rows: %w", l.target, len(batch), err))
		}
		l.updateHealth.record(l.log, "status update", err)
		if err == nil {
			l.stats.updatesWritten.Add(uint64(n))
			return
		}
		select {
		case <-time.After(wait):
		case <-l.ctx.Done():
			l.stats.updatesDropped.Add(uint64(len(batch)))
			return
		}
		wait = min(2*wait, maxUpdateRetry)
	}
}

// writeUpdates writes batch and returns how many distinct rows it
// addressed. Delivered wins: a row becomes delivered from any status, and
// failed only from queued, so the order in which a uid's connections
// report (and in which batches land) does not matter.
func (l *MySQLLogger) writeUpdates(ctx context.Context, batch []statusUpdate) (int, error) {
	type key struct{ id, uid string }
	final := make(map[key]Status, len(batch))
	for _, u := range batch {
		k := key{u.id, u.uid}
		if final[k] != StatusDelivered {
			final[k] = u.status
		}
	}
	var delivered, failed []any
	for k, s := range final {
		if s == StatusDelivered {
			delivered = append(delivered, k.id, k.uid)
		} else {
			failed = append(failed, k.id, k.uid)
		}
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	sets := []struct {
		set  Status
		when string
		keys []any
	}{
		{StatusDelivered, "d.status <> 1", delivered},
		{StatusFailed, "d.status = 0", failed},
	}
	for _, set := range sets {
		for _, s := range l.buildUpdates(set.set, set.when, now, set.keys) {
			if _, err := l.db.ExecContext(ctx, s.query, s.args...); err != nil {
				return 0, err
			}
		}
	}
	return len(final), nil
}
