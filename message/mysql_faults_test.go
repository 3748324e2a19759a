package message

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"go-pusher/internal/testutil"
)

// TestMySQLOutage cuts the network between the logger and the database:
// Log fails within its deadline and Ready says why; when the network is
// back the logger recovers by itself. Every successful Log has its rows,
// and a failed one has none that look queued.
func TestMySQLOutage(t *testing.T) {
	d := newTestDB(t)
	p := testutil.StartProxy(t, d.Base.Addr)
	// Writes stuck on a blackholed connection give up after WriteTimeout.
	l := newTestLogger(t, d.DSNVia(p.Addr()), MySQLConfig{WriteTimeout: 2 * time.Second})
	ok := map[string]bool{} // id → Log succeeded
	logged := func(timeout time.Duration) (time.Duration, error) {
		id := testID(t)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		err := l.Log(ctx, Log{ID: id, UIDs: []string{"a", "b"}, Message: "m " + id})
		ok[id] = err == nil
		return time.Since(start), err
	}
	if _, err := logged(5 * time.Second); err != nil {
		t.Fatalf("Log before the outage = %v", err)
	}

	for _, mode := range []struct {
		name string
		mode testutil.ProxyMode
	}{{"cut", testutil.Cut}, {"blackhole", testutil.Blackhole}} {
		t.Run(mode.name, func(t *testing.T) {
			p.SetMode(mode.mode)
			const deadline = time.Second
			for range 3 {
				took, err := logged(deadline)
				if err == nil {
					t.Fatal("Log during the outage = nil, want an error")
				}
				// The deadline, and a little for the goroutines to notice.
				if took > deadline+500*time.Millisecond {
					t.Errorf("Log took %v to fail, deadline %v", took, deadline)
				}
				if !strings.Contains(err.Error(), "mysql") {
					t.Errorf("Log error %q does not name mysql", err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			err := l.Ready(ctx)
			cancel()
			if err == nil {
				t.Error("Ready during the outage = nil, want the reason")
			}
			t.Logf("Ready: %v", err)

			p.SetMode(testutil.Forward)
			waitFor(t, "Ready after the outage", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				return l.Ready(ctx) == nil
			})
			if _, err := logged(5 * time.Second); err != nil {
				t.Fatalf("Log after the outage = %v, want nil", err)
			}
		})
	}

	// Rows: both uids of every success; no queued row of a failure (a
	// failed Log whose commit raced the cut may leave rows marked failed).
	waitFor(t, "status updates written", func() bool { return len(l.updates) == 0 })
	for id, success := range ok {
		rows := d.rows(t, id)
		if success && len(rows) != 2 {
			t.Errorf("successful Log %s has %d rows, want 2", id, len(rows))
		}
		if !success {
			for uid, r := range rows {
				if r.Status != StatusFailed {
					waitFor(t, "failed Log's row marked failed", func() bool {
						s, _ := d.status(t, id, uid)
						return s == StatusFailed
					})
				}
			}
		}
	}
}

// TestMySQLUpdateNeverBlocks fills the status queue while the database is
// down: Update returns at once and counts what it drops.
func TestMySQLUpdateNeverBlocks(t *testing.T) {
	d := newTestDB(t)
	p := testutil.StartProxy(t, d.Base.Addr)
	l := newTestLogger(t, d.DSNVia(p.Addr()), MySQLConfig{UpdateQueue: 16, UpdateBatchSize: 4})
	id := testID(t)
	logOK(t, l, Log{ID: id, UIDs: []string{"u"}, Message: "m"})
	p.SetMode(testutil.Cut)
	start := time.Now()
	for range 1000 {
		l.Update(id, "u", StatusFailed)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("1000 Updates took %v with the database down", took)
	}
	if n := l.DroppedUpdates(); n < 1000-16-4 {
		t.Errorf("DroppedUpdates() = %d, want at least %d", n, 1000-16-4)
	}
	// Back: what was queued is written.
	p.SetMode(testutil.Forward)
	d.waitStatus(t, id, "u", StatusFailed)
}

// TestMySQLStartErrors: a DSN that cannot work is an error at start that
// names the problem and never shows the password.
func TestMySQLStartErrors(t *testing.T) {
	d := newTestDB(t)
	const pw = "s3cret-Pa55"
	user := "gp_" + randomHex(t, 4)
	for _, q := range []string{
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", user, pw),
		fmt.Sprintf("CREATE USER '%s'@'localhost' IDENTIFIED BY '%s'", user, pw),
		fmt.Sprintf("GRANT SELECT, INSERT, UPDATE ON %s.* TO '%s'@'%%', '%s'@'localhost'", d.Name, user, user),
	} {
		if _, err := d.Admin.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		for _, host := range []string{"%", "localhost"} {
			if _, err := d.Admin.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%s'", user, host)); err != nil {
				t.Errorf("drop user: %v", err)
			}
		}
	})
	dsn := func(user, pass, addr, db string) string {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = user, pass, "tcp", addr, db
		return cfg.FormatDSN()
	}
	// A port with nobody listening: a listener closed at once.
	closed := testutil.StartProxy(t, d.Base.Addr)
	closed.SetMode(testutil.Cut)

	tests := []struct {
		name string
		dsn  string
		want string
	}{
		{"unparsable", "root:" + pw + "@tcp(127.0.0.1:3306", "unparsable DSN"},
		{"unparsable param", "root:" + pw + "@tcp(127.0.0.1:3306)/db?parseTime=maybe", "unparsable DSN"},
		{"no database", dsn("root", pw, d.Base.Addr, ""), "names no database"},
		{"unreachable", dsn("root", pw, "127.0.0.1:1", d.Name), "cannot connect"},
		{"connection closed", dsn("root", pw, closed.Addr(), d.Name), "cannot connect"},
		{"wrong password", dsn(user, pw+"x", d.Base.Addr, d.Name), "Access denied"},
		{"unknown database", dsn(user, pw, d.Base.Addr, d.Name+"_missing"), "cannot connect"},
		{"no CREATE privilege", dsn(user, pw, d.Base.Addr, d.Name), "no privilege to create table db_logs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l, err := NewMySQLLogger(ctx, MySQLConfig{DSN: tt.dsn}, testSlog(t))
			if err == nil {
				l.Close(ctx)
				t.Fatalf("NewMySQLLogger(%s) = nil error, want %q", tt.name, tt.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("NewMySQLLogger() = %q, want it to say %q", msg, tt.want)
			}
			if strings.Contains(msg, pw) || strings.Contains(msg, "\n") {
				t.Errorf("NewMySQLLogger() = %q: shows the password or has several lines", msg)
			}
		})
	}

	// With the table there, the user may log without CREATE; without
	// INSERT it may not start.
	l := newTestLogger(t, d.DSN, MySQLConfig{}) // creates db_logs as root
	l.Close(context.Background())
	newTestLogger(t, dsn(user, pw, d.Base.Addr, d.Name), MySQLConfig{})
	if _, err := d.Admin.Exec(fmt.Sprintf("REVOKE INSERT ON %s.* FROM '%s'@'%%', '%s'@'localhost'", d.Name, user, user)); err != nil {
		t.Fatal(err)
	}
	_, err := NewMySQLLogger(context.Background(), MySQLConfig{DSN: dsn(user, pw, d.Base.Addr, d.Name)}, testSlog(t))
	if err == nil || !strings.Contains(err.Error(), "no privilege to write table db_logs") {
		t.Errorf("NewMySQLLogger without INSERT = %v, want no privilege to write", err)
	}

	// A db_logs that is not ours.
	other := newTestDB(t)
	if _, err := other.DB.Exec("CREATE TABLE db_logs (id INT PRIMARY KEY, msg TEXT)"); err != nil {
		t.Fatal(err)
	}
	_, err = NewMySQLLogger(context.Background(), MySQLConfig{DSN: other.DSN}, testSlog(t))
	if err == nil || !strings.Contains(err.Error(), "exists with other columns") {
		t.Errorf("NewMySQLLogger with a foreign db_logs = %v, want exists with other columns", err)
	}
}

func TestCheckMySQLDSN(t *testing.T) {
	tests := []struct {
		dsn string
		ok  bool
	}{
		{"root@tcp(127.0.0.1:3306)/pusher", true},
		{"u:p@tcp(db:3306)/pusher?timeout=2s&charset=latin1", true},
		{"u:p@unix(/run/mysqld/mysqld.sock)/pusher", true},
		{"u:s3cret@tcp(127.0.0.1:3306)/", false},
		{"u:s3cret@tcp(127.0.0.1:3306", false},
		{"u:s3cret@tcp(127.0.0.1:3306)/db?timeout=soon", false},
		{"u:s3cret@tcp(127.0.0.1:3306)db", false},
		{"not a dsn", false},
	}
	for _, tt := range tests {
		err := CheckMySQLDSN(tt.dsn)
		if (err == nil) != tt.ok {
			t.Errorf("CheckMySQLDSN(%q) = %v, want ok %v", tt.dsn, err, tt.ok)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("CheckMySQLDSN(%q) = %q: shows the password", tt.dsn, err)
		}
	}
}

// TestMySQLConcurrentLogAndUpdate runs Log and Update from many
// goroutines at once, as the server does (the race detector watches).
func TestMySQLConcurrentLogAndUpdate(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{})
	var wg sync.WaitGroup
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = testID(t)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := l.Log(ctx, Log{ID: ids[i], UIDs: []string{"a", "b"}, Message: "m"}); err != nil {
				t.Errorf("Log = %v", err)
				return
			}
			// Two connections of a: one delivered, one failed, either order.
			l.Update(ids[i], "a", StatusFailed)
			l.Update(ids[i], "a", StatusDelivered)
			l.Update(ids[i], "b", StatusFailed)
			if err := l.Ready(ctx); err != nil { // a readiness probe meanwhile
				t.Errorf("Ready = %v", err)
			}
		})
	}
	wg.Wait()
	waitFor(t, "all statuses written", func() bool {
		return d.count(t, "uid = 'a' AND status = 1") == len(ids) && d.count(t, "uid = 'b' AND status = 2") == len(ids)
	})
}
