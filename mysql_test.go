package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
	"go-pusher/message"
)

// These tests run the server with -message-log=mysql against a real
// MariaDB (make test starts one), each in a database of its own.

// mysqlTestDB is a database of the test's own on the test server.
type mysqlTestDB struct{ *testutil.MySQLDB }

// newMySQLTestDB creates a database for tb; without a server the test is
// skipped, or fails under CI=true.
func newMySQLTestDB(tb testing.TB) *mysqlTestDB { return &mysqlTestDB{testutil.NewMySQLDB(tb)} }

func (d *mysqlTestDB) count(tb testing.TB, where string, args ...any) int {
	tb.Helper()
	var n int
	if err := d.DB.QueryRow("SELECT COUNT(*) FROM db_logs WHERE "+where, args...).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// row returns the message and status of (id, uid), or ok false.
func (d *mysqlTestDB) row(tb testing.TB, id, uid string) (msg string, s message.Status, ok bool) {
	tb.Helper()
	err := d.DB.QueryRow("SELECT message, status FROM db_logs WHERE id = ? AND uid = ?", id, uid).Scan(&msg, &s)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, false
	}
	if err != nil {
		tb.Fatal(err)
	}
	return msg, s, true
}

func (d *mysqlTestDB) waitStatus(t *testing.T, id, uid string, want message.Status) {
	t.Helper()
	waitFor(t, fmt.Sprintf("row %s/%s %s", id, uid, want), func() bool {
		_, s, _ := d.row(t, id, uid)
		return s == want
	})
}

// mysqlConfig is the test configuration with the mysql log on dsn.
func mysqlConfig(tb testing.TB, dsn string, args ...string) Config {
	tb.Helper()
	cfg, err := parseConfig(append([]string{"-addr", "127.0.0.1:0", "-message-log", "mysql"}, args...),
		testEnv(map[string]string{"PUSHER_MYSQL_DSN": dsn}))
	if err != nil {
		tb.Fatalf("parseConfig: %v", err)
	}
	return cfg
}

// openMySQLLog opens the message log of cfg as the server does.
func openMySQLLog(tb testing.TB, cfg Config) message.Logger {
	tb.Helper()
	l, err := openMessageLog(context.Background(), cfg, io.Discard, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatalf("openMessageLog: %v", err)
	}
	return l
}

// startMySQLServer starts a server whose message log is the database of
// dsn; the server closes the log when it stops.
func startMySQLServer(t *testing.T, dsn string, args ...string) *testServer {
	t.Helper()
	cfg := mysqlConfig(t, dsn, args...)
	return startServerLog(t, cfg, openMySQLLog(t, cfg))
}

func TestMySQLSendDelivered(t *testing.T) {
	d := newMySQLTestDB(t)
	ts := startMySQLServer(t, d.DSN)
	conn := ts.dial("alice")
	const msg = "héllo 😀 'quoted' \\ \"and\" more"
	id := ts.sendOK("alice", msg)
	if got := readText(t, conn); got != msg {
		t.Fatalf("read %q, want %q", got, msg)
	}
	d.waitStatus(t, id, "alice", message.StatusDelivered)
	if got, _, _ := d.row(t, id, "alice"); got != msg {
		t.Errorf("row message = %q, want %q", got, msg)
	}
	if n := d.count(t, "1"); n != 1 {
		t.Errorf("%d rows, want 1", n)
	}
	if code, body := ts.get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q, want 200", code, body)
	}
	waitFor(t, "status update counted on /metrics", func() bool {
		_, body := ts.get("/metrics")
		return strings.Contains(body, "\npusher_mysql_rows_total 1\n") &&
			strings.Contains(body, "\npusher_mysql_batches_total 1\n") &&
			strings.Contains(body, "\npusher_mysql_status_updates_total 1\n") &&
			strings.Contains(body, "\npusher_mysql_status_updates_dropped_total 0\n")
	})
}

func TestMySQLMulticastRows(t *testing.T) {
	d := newMySQLTestDB(t)
	ts := startMySQLServer(t, d.DSN)
	c1, c2 := ts.dial("u1"), ts.dial("u2")
	code, body := ts.sendJSON(map[string]any{"uids": []string{"u1", "u2", "u3"}, "message": "to all"})
	if code != http.StatusOK {
		t.Fatalf("send = %d %q, want 200", code, body)
	}
	var reply struct {
		ID       string
		Sent     []string
		NotFound []string `json:"not_found"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(reply.Sent, reply.NotFound) != "[u1 u2] [u3]" {
		t.Fatalf("sent %v, not_found %v, want [u1 u2] and [u3]", reply.Sent, reply.NotFound)
	}
	for _, c := range []*websocket.Conn{c1, c2} {
		if got := readText(t, c); got != "to all" {
			t.Errorf("read %q, want %q", got, "to all")
		}
	}
	d.waitStatus(t, reply.ID, "u1", message.StatusDelivered)
	d.waitStatus(t, reply.ID, "u2", message.StatusDelivered)
	if n := d.count(t, "id = ?", reply.ID); n != 2 {
		t.Errorf("%d rows for the multicast, want 2 (none for not_found u3)", n)
	}

	// Everyone offline: 200, and no row at all.
	code, body = ts.sendJSON(map[string]any{"uids": []string{"u8", "u9"}, "message": "nobody"})
	if code != http.StatusOK {
		t.Fatalf("send to offline uids = %d %q, want 200", code, body)
	}
	if n := d.count(t, "message = 'nobody'"); n != 0 {
		t.Errorf("%d rows for a multicast to offline uids, want 0", n)
	}
}

// TestMySQLOutageSend cuts the database off: /send answers 503 within
// -message-log-timeout and pushes nothing, /readyz says why, WebSocket
// connections stay open; when the database is back /send works again
// without a restart.
func TestMySQLOutageSend(t *testing.T) {
	for _, mode := range []struct {
		name string
		mode testutil.ProxyMode
	}{{"cut", testutil.Cut}, {"blackhole", testutil.Blackhole}} {
		t.Run(mode.name, func(t *testing.T) {
			d := newMySQLTestDB(t)
			p := testutil.StartProxy(t, d.Base.Addr)
			const timeout = time.Second
			ts := startMySQLServer(t, d.DSNVia(p.Addr()), "-message-log-timeout", timeout.String())
			conn := ts.dial("alice")
			ts.sendOK("alice", "before")
			if got := readText(t, conn); got != "before" {
				t.Fatalf("read %q, want before", got)
			}

			p.SetMode(mode.mode)
			for range 3 {
				start := time.Now()
				code, body := ts.send("application/x-www-form-urlencoded", url.Values{"uid": {"alice"}, "message": {"lost"}}.Encode())
				took := time.Since(start)
				if code != http.StatusServiceUnavailable {
					t.Fatalf("send during the outage = %d %q, want 503", code, body)
				}
				if took > timeout+time.Second {
					t.Errorf("send took %v to answer 503, timeout %v", took, timeout)
				}
			}
			code, body := ts.readyz()
			if code != http.StatusServiceUnavailable {
				t.Errorf("/readyz during the outage = %d %q, want 503", code, body)
			}
			if !strings.Contains(ts.logBuf.String(), `msg="not ready" reason="message log: `) {
				t.Errorf("the log does not say why the server is not ready:\n%s", ts.logBuf.String())
			}
			if n := ts.hub.Connections(); n != 1 {
				t.Errorf("%d connections during the outage, want 1", n)
			}

			p.SetMode(testutil.Forward)
			var id string
			waitFor(t, "send after the outage", func() bool {
				code, body := ts.send("application/x-www-form-urlencoded", url.Values{"uid": {"alice"}, "message": {"after"}}.Encode())
				if code == http.StatusOK {
					var reply struct{ ID string }
					_ = json.Unmarshal([]byte(body), &reply) // checked through id below
					id = reply.ID
				}
				return code == http.StatusOK
			})
			// The same connection; nothing of the refused sends came first.
			if got := readText(t, conn); got != "after" {
				t.Fatalf("first message after the outage = %q, want after (a refused message was pushed?)", got)
			}
			d.waitStatus(t, id, "alice", message.StatusDelivered)
			waitFor(t, "/readyz after the outage", func() bool {
				code, _ := ts.readyz()
				return code == http.StatusOK
			})
			// A refused message left no row that looks queued.
			waitFor(t, "refused messages not queued", func() bool {
				return d.count(t, "message = 'lost' AND status <> ?", message.StatusFailed) == 0
			})
		})
	}
}

// TestMySQLParallelSend: hundreds of concurrent /send, and every 200 has
// its row, once.
func TestMySQLParallelSend(t *testing.T) {
	d := newMySQLTestDB(t)
	ts := startMySQLServer(t, d.DSN)
	const users, sends = 8, 400
	var received atomic.Int64
	var readers sync.WaitGroup
	conns := make([]*websocket.Conn, users)
	for i := range conns {
		conns[i] = ts.dial(fmt.Sprintf("user%d", i))
		readers.Go(func() {
			for {
				if _, _, err := conns[i].ReadMessage(); err != nil {
					return // closed below
				}
				received.Add(1)
			}
		})
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	ids := make([]string, sends)
	uids := make([]string, sends)
	var wg sync.WaitGroup
	for i := range sends {
		uids[i] = fmt.Sprintf("user%d", i%users)
		wg.Go(func() {
			code, body, err := postSend(client, ts.opsURL(), uids[i], fmt.Sprintf("message %d", i))
			switch {
			case err != nil:
				t.Errorf("send %d: %v", i, err)
			case code != http.StatusOK:
				t.Errorf("send %d = %d %q, want 200", i, code, body)
			default:
				var reply struct{ ID string }
				if err := json.Unmarshal([]byte(body), &reply); err != nil || reply.ID == "" {
					t.Errorf("send %d reply %q: no id", i, body)
				}
				ids[i] = reply.ID
			}
		})
	}
	wg.Wait()
	ok := 0
	for i, id := range ids {
		if id == "" {
			continue
		}
		ok++
		if msg, _, found := d.row(t, id, uids[i]); !found || msg != fmt.Sprintf("message %d", i) {
			t.Errorf("send %d (id %s) answered 200: row found %v, message %q", i, id, found, msg)
		}
	}
	if n := d.count(t, "1"); n != ok {
		t.Errorf("%d rows for %d successful sends", n, ok)
	}
	waitFor(t, "every message read", func() bool { return received.Load() == int64(ok) })
	waitFor(t, "every row delivered", func() bool { return d.count(t, "status = 1") == ok })
	for _, c := range conns {
		c.Close()
	}
	readers.Wait()
}

// postSend posts a form /send and returns the answer; unlike ts.send it
// may run on any goroutine.
func postSend(client *http.Client, base, uid, msg string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, base+"/send", strings.NewReader(url.Values{"uid": {uid}, "message": {msg}}.Encode()))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestMySQLConfig(t *testing.T) {
	tests := []struct {
		name string
		args []string
		dsn  string
		want string // in the error; "" for none
	}{
		{"defaults", nil, "u:p@tcp(db:3306)/pusher", ""},
		{"batch flags", []string{"-mysql-batch-size", "64", "-mysql-batch-interval", "5ms"}, "u:p@tcp(db:3306)/pusher", ""},
		{"unparsable dsn", nil, "u:s3cret@tcp(db:3306", "invalid PUSHER_MYSQL_DSN"},
		{"dsn without database", nil, "u:s3cret@tcp(db:3306)/", "names no database"},
		{"batch size 0", []string{"-mysql-batch-size", "0"}, "u:p@tcp(db:3306)/pusher", "-mysql-batch-size"},
		{"batch interval 0", []string{"-mysql-batch-interval", "0s"}, "u:p@tcp(db:3306)/pusher", "-mysql-batch-interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(append([]string{"-message-log", "mysql"}, tt.args...),
				testEnv(map[string]string{"PUSHER_MYSQL_DSN": tt.dsn}))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("parseConfig() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("parseConfig() = %v, want an error naming %s", err, tt.want)
			case err != nil && strings.Contains(err.Error(), "s3cret"):
				t.Errorf("parseConfig() = %v: shows the password", err)
			}
		})
	}
	env := testEnv(map[string]string{
		"PUSHER_MYSQL_DSN":        "u:p@tcp(db:3306)/pusher",
		"PUSHER_MYSQL_BATCH_SIZE": "32", "PUSHER_MYSQL_BATCH_INTERVAL": "7ms",
	})
	cfg, err := parseConfig([]string{"-message-log", "mysql", "-mysql-batch-size", "16"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MySQLBatchSize != 16 || cfg.MySQLBatchInterval != 7*time.Millisecond {
		t.Errorf("batch size, interval = %d, %v, want 16 (flag wins), 7ms (env)", cfg.MySQLBatchSize, cfg.MySQLBatchInterval)
	}
}

// TestMySQLStartErrors: run exits with one line naming PUSHER_MYSQL_DSN
// when the database cannot be used, without the password.
func TestMySQLStartErrors(t *testing.T) {
	const pw = "s3cret-pw"
	for _, tt := range []struct{ name, dsn, want string }{
		{"unreachable", "root:" + pw + "@tcp(127.0.0.1:1)/pusher", "PUSHER_MYSQL_DSN: mysql root@tcp(127.0.0.1:1)/pusher: cannot connect"},
		{"unparsable", "root:" + pw + "@tcp(127.0.0.1:1", "invalid PUSHER_MYSQL_DSN: unparsable DSN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			env := testEnv(map[string]string{"PUSHER_MYSQL_DSN": tt.dsn})
			err := run(context.Background(), []string{"-addr", "127.0.0.1:0", "-message-log", "mysql"}, env, &stdout, &stderr)
			if err == nil {
				t.Fatal("run() = nil, want an error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.want) || strings.Contains(msg, "\n") || strings.Contains(msg, pw) {
				t.Errorf("run() = %q, want one line starting %q without the password", msg, tt.want)
			}
		})
	}
}
