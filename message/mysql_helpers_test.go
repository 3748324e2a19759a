package message

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"go-pusher/internal/testutil"
)

// testDB is a fresh database on the test server, dropped when the test
// ends.
type testDB struct{ *testutil.MySQLDB }

// newTestDB creates a database of its own for t. Without a server the
// test is skipped, or fails under CI=true (where a skip would hide it).
func newTestDB(t testing.TB) *testDB { return &testDB{testutil.NewMySQLDB(t)} }

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// row is one db_logs row as the tests read it.
type row struct {
	ID, UID, Message string
	Status           Status
}

// rows returns the rows of id, by uid.
func (d *testDB) rows(t testing.TB, id string) map[string]row {
	t.Helper()
	rs, err := d.DB.Query("SELECT id, uid, message, status FROM db_logs WHERE id = ?", id)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]row{}
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.ID, &r.UID, &r.Message, &r.Status); err != nil {
			t.Fatal(err)
		}
		out[r.UID] = r
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// status returns the status of (id, uid), and false without such a row.
func (d *testDB) status(t testing.TB, id, uid string) (Status, bool) {
	t.Helper()
	var s Status
	err := d.DB.QueryRow("SELECT status FROM db_logs WHERE id = ? AND uid = ?", id, uid).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return s, true
}

func (d *testDB) count(t testing.TB, where string, args ...any) int {
	t.Helper()
	var n int
	if err := d.DB.QueryRow("SELECT COUNT(*) FROM db_logs WHERE "+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// newTestLogger starts a MySQLLogger on dsn with cfg and closes it when
// the test ends (before the database is dropped).
func newTestLogger(t testing.TB, dsn string, cfg MySQLConfig) *MySQLLogger {
	t.Helper()
	cfg.DSN = dsn
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := NewMySQLLogger(ctx, cfg, testSlog(t))
	if err != nil {
		t.Fatalf("NewMySQLLogger: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// testSlog logs to the test's output only when it runs with -v.
func testSlog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, what, cond)
}
