package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"go-pusher/message"
)

// mysqlStartTimeout bounds the start-up checks of the mysql log (connect,
// create db_logs): a server that does not answer within it is reported as
// unreachable rather than hanging the start.
const mysqlStartTimeout = 10 * time.Second

// openMessageLog returns the logger -message-log names. The mysql log
// logs to stderr in the format of -log-format.
//
// TODO(lead): main.go should call openMessageLogWith with the server's
// logger (and its stderr); then this wrapper goes.
func openMessageLog(ctx context.Context, cfg Config, stdout io.Writer) (message.Logger, error) {
	return openMessageLogWith(ctx, cfg, stdout, newLogger(cfg.LogFormat, cfg.LogLevel, os.Stderr))
}

// openMessageLogWith returns the logger -message-log names; log receives
// what the logger has to say (a database outage, dropped status updates).
// A mysql log that cannot start (unreachable, no privilege) is an error
// naming PUSHER_MYSQL_DSN, without its password.
func openMessageLogWith(ctx context.Context, cfg Config, stdout io.Writer, log *slog.Logger) (message.Logger, error) {
	switch cfg.MessageLog {
	case "stdout":
		return message.NewStdoutLogger(stdout), nil
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
		}, log.With("component", "message_log"))
		if err != nil {
			return nil, fmt.Errorf("PUSHER_MYSQL_DSN: %w", err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("-message-log %s: not available in this build", cfg.MessageLog)
}
