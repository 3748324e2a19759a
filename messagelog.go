package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"go-pusher/message"
)

// mysqlStartTimeout bounds the start-up checks of the mysql log (connect,
// create db_logs): a server that does not answer within it is reported as
// unreachable rather than hanging the start.
const mysqlStartTimeout = 10 * time.Second

// openMessageLog returns the logger -message-log names; log receives
// what the logger has to say (a database outage, dropped status updates).
// A mysql log that cannot start (unreachable, no privilege) is an error
// naming PUSHER_MYSQL_DSN, without its password.
func openMessageLog(ctx context.Context, cfg Config, stdout io.Writer, log *slog.Logger) (message.Logger, error) {
	switch cfg.MessageLog {
	case "stdout":
		return message.NewStdoutLogger(stdout, cfg.MessageLogTimeout), nil
	case "none":
		return message.NoneLogger{}, nil
	case "mysql":
		ctx, cancel := context.WithTimeout(ctx, mysqlStartTimeout)
		defer cancel()
		l, err := message.NewMySQLLogger(ctx, message.MySQLConfig{
			DSN:            cfg.MySQLDSN,
			BatchSize:      cfg.MySQLBatchSize,
			BatchInterval:  cfg.MySQLBatchInterval,
			MaxMessageSize: cfg.MaxMessageSize,
			LogTimeout:     cfg.MessageLogTimeout,
		}, log.With("component", "message_log"))
		if err != nil {
			return nil, fmt.Errorf("PUSHER_MYSQL_DSN: %w", err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("-message-log %s: not available in this build", cfg.MessageLog)
}

// mysqlCollector exports a MySQL log's counters on /metrics.
type mysqlCollector struct {
	l                                              *message.MySQLLogger
	batches, rows, failed, updates, updatesDropped *prometheus.Desc
}

func newMySQLCollector(l *message.MySQLLogger) *mysqlCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &mysqlCollector{
		l:              l,
		batches:        d("pusher_mysql_batches_total", "Insert batches committed to db_logs (group commit)."),
		rows:           d("pusher_mysql_rows_total", "Rows inserted into db_logs."),
		failed:         d("pusher_mysql_failed_batches_total", "Insert batches that failed; their /send calls answered 503."),
		updates:        d("pusher_mysql_status_updates_total", "Delivery status updates written to db_logs."),
		updatesDropped: d("pusher_mysql_status_updates_dropped_total", "Delivery status updates dropped because their queue was full."),
	}
}

func (c *mysqlCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.batches
	ch <- c.rows
	ch <- c.failed
	ch <- c.updates
	ch <- c.updatesDropped
}

func (c *mysqlCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	for _, m := range []struct {
		d *prometheus.Desc
		v uint64
	}{{c.batches, st.Batches}, {c.rows, st.Rows}, {c.failed, st.FailedBatches}, {c.updates, st.UpdatesWritten}, {c.updatesDropped, st.UpdatesDropped}} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v))
	}
}
