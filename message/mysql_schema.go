package message

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// createTable is db_logs, one row per (message, uid). The uid collation
// is filled in by prepareSchema (see uidCollations).
//
//   - id is the /send message id: ASCII, compared byte for byte.
//   - uid compares byte for byte and without padding, so "a" and "a "
//     (both valid uids) are two rows, not a duplicate key.
//   - message holds a full -max-message-size message (MEDIUMTEXT: up to
//     16 MiB - 1 bytes) in utf8mb4, emoji included.
//   - created_at is when /send accepted the message, updated_at the last
//     status change, both UTC with milliseconds (DATETIME, so no 2038 limit
//     and no dependence on the session time zone).
//   - The primary key (id, uid) grows at its end, because ids start with
//     their time; db_logs_uid_created serves "a uid's messages, newest
//     first" (WHERE uid = ? ORDER BY created_at DESC).
const createTable = `CREATE TABLE IF NOT EXISTS db_logs (
  id         CHAR(20)         CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'message id from /send',
  uid        VARCHAR(128)     CHARACTER SET utf8mb4 COLLATE %s NOT NULL,
  message    MEDIUMTEXT       CHARACTER SET utf8mb4 NOT NULL,
  status     TINYINT UNSIGNED NOT NULL DEFAULT 0 COMMENT '0 queued, 1 delivered, 2 failed',
  created_at DATETIME(3)      NOT NULL COMMENT 'UTC: when /send accepted the message',
  updated_at DATETIME(3)      NOT NULL COMMENT 'UTC: last status change',
  PRIMARY KEY (id, uid),
  KEY db_logs_uid_created (uid, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`

// uidCollations are binary NO PAD utf8mb4 collations, best first:
// MariaDB 10.2+ and MySQL 8.0+. utf8mb4_bin, the last resort, pads.
var uidCollations = [...]string{"utf8mb4_nopad_bin", "utf8mb4_0900_bin"}

// minMaxPacket is the smallest max_allowed_packet we accept: room for a
// batch of typical messages. Servers default to 16 MiB (MariaDB) or 64 MiB.
const minMaxPacket = 64 << 10

// MySQL error numbers we tell apart.
const (
	erNoSuchTable  = 1146
	erBadField     = 1054
	erTableAccess  = 1142
	erColumnAccess = 1143
)

// CheckMySQLDSN reports why dsn cannot be used by NewMySQLLogger without
// connecting: unparsable, or naming no database. The error never
// contains the password.
func CheckMySQLDSN(dsn string) error {
	_, err := parseMySQLDSN(dsn)
	return err
}

// parseMySQLDSN parses dsn and sets what the logger relies on.
func parseMySQLDSN(dsn string) (*mysql.Config, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		// The password is unknown when parsing fails; redact what would
		// have been it: between the first ':' and the last '@'.
		var r redactor
		if at := strings.LastIndexByte(dsn, '@'); at >= 0 {
			if c := strings.IndexByte(dsn[:at], ':'); c >= 0 {
				r = redactor(dsn[c+1 : at])
			}
		}
		return nil, r.err(fmt.Errorf("unparsable DSN (want user:password@tcp(host:3306)/dbname): %w", err))
	}
	if cfg.DBName == "" {
		return nil, fmt.Errorf("DSN %s names no database (want user:password@tcp(host:3306)/dbname)", describeDSN(cfg))
	}
	// One round trip per batch: the driver quotes the arguments into the
	// statement (also under NO_BACKSLASH_ESCAPES) instead of preparing it.
	cfg.InterpolateParams = true
	// We only write times, always in UTC, into DATETIME columns.
	cfg.Loc = time.UTC
	// Messages are utf8mb4 whatever charset the DSN asks for.
	if err := cfg.Apply(mysql.Charset("utf8mb4", "utf8mb4_general_ci")); err != nil {
		return nil, fmt.Errorf("DSN %s: %w", describeDSN(cfg), err)
	}
	// The driver assumes 64 MiB unless told; ask the server instead (0),
	// unless the DSN set a value (for a proxy with a smaller limit, say).
	if cfg.MaxAllowedPacket == mysql.NewConfig().MaxAllowedPacket {
		cfg.MaxAllowedPacket = 0
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second // dial; contexts bound it further
	}
	return cfg, nil
}

// describeDSN names the database of cfg for messages: user@net(addr)/db,
// never the password.
func describeDSN(cfg *mysql.Config) string {
	return fmt.Sprintf("%s@%s(%s)/%s", cfg.User, cfg.Net, cfg.Addr, cfg.DBName)
}

// prepareSchema checks that the server answers, creates db_logs if it is
// missing, checks that we may write it, and returns max_allowed_packet.
// Every error names target and the step that failed.
func prepareSchema(ctx context.Context, db *sql.DB, log *slog.Logger, target string) (int, error) {
	if err := db.PingContext(ctx); err != nil {
		return 0, fmt.Errorf("mysql %s: cannot connect: %w", target, err)
	}
	_, err := db.ExecContext(ctx, "SELECT id, uid, message, status, created_at, updated_at FROM db_logs LIMIT 0")
	switch {
	case err == nil:
	case isMySQLError(err, erNoSuchTable):
		if err := createLogTable(ctx, db, log); err != nil {
			return 0, fmt.Errorf("mysql %s: %w", target, err)
		}
	case isMySQLError(err, erBadField):
		return 0, fmt.Errorf("mysql %s: table db_logs exists with other columns (want id, uid, message, status, created_at, updated_at): %w", target, err)
	case isMySQLError(err, erTableAccess, erColumnAccess):
		return 0, fmt.Errorf("mysql %s: no privilege to read table db_logs: %w", target, err)
	default:
		return 0, fmt.Errorf("mysql %s: check table db_logs: %w", target, err)
	}
	// Both change nothing; the server checks the privilege before it
	// looks at WHERE.
	for _, q := range []string{
		"INSERT INTO db_logs (id, uid, message, status, created_at, updated_at) SELECT '', '', '', 0, UTC_TIMESTAMP(), UTC_TIMESTAMP() FROM DUAL WHERE 1 = 0",
		"UPDATE db_logs SET status = status WHERE 1 = 0",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			if isMySQLError(err, erTableAccess, erColumnAccess) {
				return 0, fmt.Errorf("mysql %s: no privilege to write table db_logs (want INSERT and UPDATE): %w", target, err)
			}
			return 0, fmt.Errorf("mysql %s: check table db_logs: %w", target, err)
		}
	}
	var maxPacket int
	if err := db.QueryRowContext(ctx, "SELECT @@max_allowed_packet").Scan(&maxPacket); err != nil {
		return 0, fmt.Errorf("mysql %s: read max_allowed_packet: %w", target, err)
	}
	if maxPacket < minMaxPacket {
		return 0, fmt.Errorf("mysql %s: max_allowed_packet %d is too small: want at least %d", target, maxPacket, minMaxPacket)
	}
	return maxPacket, nil
}

// createLogTable creates db_logs with the best uid collation the server has.
func createLogTable(ctx context.Context, db *sql.DB, log *slog.Logger) error {
	collation := "utf8mb4_bin"
	for _, c := range uidCollations {
		var n int
		err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.COLLATIONS WHERE COLLATION_NAME = ?", c).Scan(&n)
		if err != nil {
			return fmt.Errorf("look up collation %s: %w", c, err)
		}
		if n > 0 {
			collation = c
			break
		}
	}
	if collation == "utf8mb4_bin" {
		log.Warn("mysql server has no NO PAD binary collation: uids that differ only in trailing spaces share rows")
	}
	if _, err := db.ExecContext(ctx, fmt.Sprintf(createTable, collation)); err != nil {
		if isMySQLError(err, erTableAccess) {
			return fmt.Errorf("no privilege to create table db_logs (create it as the README shows, or grant CREATE): %w", err)
		}
		return fmt.Errorf("create table db_logs: %w", err)
	}
	log.Info("mysql table db_logs created", "uid_collation", collation)
	return nil
}

func isMySQLError(err error, numbers ...uint16) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	return slices.Contains(numbers, me.Number)
}

// redactor removes a password from error messages and log lines: the
// driver does not put it there, but a message must never carry it, so
// we make sure.
type redactor string

func (r redactor) str(s string) string {
	if r == "" {
		return s
	}
	return strings.ReplaceAll(s, string(r), "xxxxx")
}

func (r redactor) err(err error) error {
	if err == nil {
		return nil
	}
	if msg := r.str(err.Error()); msg != err.Error() {
		return &redactedError{msg, err}
	}
	return err
}

// redactedError is err with the password taken out of its message. It
// unwraps to err, so errors.Is and errors.As still see the cause.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
