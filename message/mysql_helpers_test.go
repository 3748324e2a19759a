package message

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// defaultTestMySQLDSN is the server `make test` starts; PUSHER_TEST_MYSQL_DSN
// overrides it.
const defaultTestMySQLDSN = "root@tcp(127.0.0.1:3306)/"

// testDB is a fresh database on the test server, dropped when the test ends.
type testDB struct {
	name  string
	dsn   string  // names the database
	db    *sql.DB // on the database, to check what the logger wrote
	admin *sql.DB // on the server, as the test user
	base  *mysql.Config
}

// newTestDB creates a database of its own for t. Without a server the
// test is skipped, or fails under CI=true (where a skip would hide it).
func newTestDB(t testing.TB) *testDB {
	t.Helper()
	base := os.Getenv("PUSHER_TEST_MYSQL_DSN")
	if base == "" {
		base = defaultTestMySQLDSN
	}
	cfg, err := mysql.ParseDSN(base)
	if err != nil {
		t.Fatalf("PUSHER_TEST_MYSQL_DSN: %v", err)
	}
	cfg.DBName = ""
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		if os.Getenv("CI") == "true" {
			t.Fatalf("MariaDB at %s: %v (make test starts it)", cfg.Addr, err)
		}
		t.Skipf("MariaDB at %s: %v (make test starts it)", cfg.Addr, err)
	}
	d := &testDB{name: "gp_test_" + randomHex(t, 6), admin: admin, base: cfg}
	if _, err := admin.Exec("CREATE DATABASE " + d.name); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	dcfg := cfg.Clone()
	dcfg.DBName = d.name
	d.dsn = dcfg.FormatDSN()
	d.db, err = sql.Open("mysql", d.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.db.Close()
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + d.name); err != nil {
			t.Errorf("drop database %s: %v", d.name, err)
		}
		admin.Close()
	})
	return d
}

// dsnVia is the test database's DSN through addr (a proxy) instead of
// the server's own address.
func (d *testDB) dsnVia(addr string) string {
	cfg := d.base.Clone()
	cfg.DBName = d.name
	cfg.Addr = addr
	return cfg.FormatDSN()
}

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
	rs, err := d.db.Query("SELECT id, uid, message, status FROM db_logs WHERE id = ?", id)
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
	err := d.db.QueryRow("SELECT status FROM db_logs WHERE id = ? AND uid = ?", id, uid).Scan(&s)
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
	if err := d.db.QueryRow("SELECT COUNT(*) FROM db_logs WHERE "+where, args...).Scan(&n); err != nil {
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

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// proxyMode is what a tcpProxy does with connections.
type proxyMode int

const (
	proxyForward proxyMode = iota // pass bytes both ways
	proxyCut                      // close every connection, new ones at once
	proxyHang                     // hold connections open and pass nothing: a blackhole
)

// tcpProxy stands between a logger and the database so that a test can
// cut the network and restore it, with the same address throughout.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	mode   proxyMode
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// startProxy forwards a loopback port to target until the test ends.
func startProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.setMode(proxyCut)
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

// setMode switches the proxy and closes every connection it holds: a cut
// ends them as a network failure would, and a restored network resets
// what a blackhole held (rather than leaving it stuck until timeouts).
func (p *tcpProxy) setMode(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // listener closed at cleanup
		}
		p.mu.Lock()
		mode := p.mode
		switch mode {
		case proxyCut:
			c.Close()
		case proxyHang:
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if mode == proxyForward {
			p.forward(c)
		}
	}
}

func (p *tcpProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.mode != proxyForward { // cut while dialling
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		// An error here is the cut or the peer closing: either ends both.
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	p.wg.Go(func() { pipe(up, c) })
	p.wg.Go(func() { pipe(c, up) })
}
