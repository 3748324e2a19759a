package message

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// testID returns a message id of the shape /send makes (20 characters).
func testID(t testing.TB) string {
	t.Helper()
	return randomHex(t, 10)
}

func logOK(t testing.TB, l *MySQLLogger, m Log) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Log(ctx, m); err != nil {
		t.Fatalf("Log(%s) = %v, want nil", m.ID, err)
	}
}

func TestMySQLLogRows(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{})
	tests := []struct {
		name string
		uids []string
		msg  string
	}{
		{"unicast", []string{"u1"}, "hello"},
		// The uid column compares bytes without padding: these are 4 rows.
		{"multicast", []string{"u1", "U1", "u1 ", "ü"}, "to all"},
		{"escapes", []string{`q'u"o\te`}, "a'b\"c\\d\x00e\nf\rg\x1ah; DROP TABLE db_logs; --"},
		{"emoji", []string{"用户😀"}, "héllo 😀 世界"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := testID(t)
			at := time.Date(2026, 5, 4, 3, 2, 1, 987654321, time.FixedZone("X", 3600))
			logOK(t, l, Log{ID: id, UIDs: tt.uids, Message: tt.msg, Time: at})
			got := d.rows(t, id)
			if len(got) != len(tt.uids) {
				t.Fatalf("rows of %s: %d (%v), want %d", id, len(got), got, len(tt.uids))
			}
			for _, uid := range tt.uids {
				want := row{ID: id, UID: uid, Message: tt.msg, Status: StatusQueued}
				if got[uid] != want {
					t.Errorf("row %q = %+v, want %+v", uid, got[uid], want)
				}
			}
			var created, updated string
			err := d.DB.QueryRow("SELECT created_at, updated_at FROM db_logs WHERE id = ? LIMIT 1", id).Scan(&created, &updated)
			if err != nil {
				t.Fatal(err)
			}
			if want := "2026-05-04 02:02:01.987"; created != want || updated != want {
				t.Errorf("created_at, updated_at = %s, %s, want %s (UTC, milliseconds)", created, updated, want)
			}
		})
	}
}

func TestMySQLLogRefusesBadInput(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{})
	ctx := context.Background()
	if err := l.Log(ctx, Log{ID: testID(t)}); err != nil {
		t.Errorf("Log(no uids) = %v, want nil (nothing to record)", err)
	}
	bad := []struct {
		name string
		m    Log
	}{
		{"invalid utf8", Log{ID: testID(t), UIDs: []string{"u"}, Message: "x\xffy"}},
		{"long uid", Log{ID: testID(t), UIDs: []string{strings.Repeat("u", 129)}, Message: "m"}},
		{"empty uid", Log{ID: testID(t), UIDs: []string{""}, Message: "m"}},
		{"long id", Log{ID: strings.Repeat("a", 21), UIDs: []string{"u"}, Message: "m"}},
		{"id with space", Log{ID: "a b", UIDs: []string{"u"}, Message: "m"}},
		// A row larger than max_allowed_packet (16 MiB on the test server).
		{"row too large", Log{ID: testID(t), UIDs: []string{"u"}, Message: strings.Repeat("'", 9<<20)}},
	}
	for _, tt := range bad {
		if err := l.Log(ctx, tt.m); err == nil {
			t.Errorf("%s: Log() = nil, want an error", tt.name)
		}
	}
	if n := d.count(t, "1"); n != 0 {
		t.Errorf("%d rows after refused messages, want 0", n)
	}
	// A refused message does not hurt the batch of others.
	logOK(t, l, Log{ID: testID(t), UIDs: []string{"u"}, Message: "ok"})
}

// waitStatus waits until the row (id, uid) has status want.
func (d *testDB) waitStatus(t testing.TB, id, uid string, want Status) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s/%s %s", id, uid, want), func() bool {
		s, _ := d.status(t, id, uid)
		return s == want
	})
}

func TestMySQLStatusUpdates(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{})
	tests := []struct {
		name    string
		updates []Status
		// separate: wait for each update to land before the next, so that
		// they are written in different batches in this order.
		separate bool
		want     Status
	}{
		{"delivered", []Status{StatusDelivered}, false, StatusDelivered},
		{"failed", []Status{StatusFailed}, false, StatusFailed},
		{"delivered twice", []Status{StatusDelivered, StatusDelivered}, false, StatusDelivered},
		{"delivered then failed, one batch", []Status{StatusDelivered, StatusFailed}, false, StatusDelivered},
		{"failed then delivered, one batch", []Status{StatusFailed, StatusDelivered}, false, StatusDelivered},
		{"delivered then failed, two batches", []Status{StatusDelivered, StatusFailed}, true, StatusDelivered},
		{"failed then delivered, two batches", []Status{StatusFailed, StatusDelivered}, true, StatusDelivered},
		{"queued changes nothing", []Status{StatusQueued}, false, StatusQueued},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := testID(t)
			logOK(t, l, Log{ID: id, UIDs: []string{"a", "b"}, Message: "m"})
			before := l.Stats().UpdatesWritten
			for _, s := range tt.updates {
				written := l.Stats().UpdatesWritten
				l.Update(id, "a", s)
				if tt.separate {
					waitFor(t, "update written", func() bool { return l.Stats().UpdatesWritten > written })
				}
			}
			if tt.want == StatusQueued {
				// An update of another row, queued after ours, has landed.
				l.Update(id, "b", StatusDelivered)
				d.waitStatus(t, id, "b", StatusDelivered)
			} else {
				waitFor(t, "updates written", func() bool { return l.Stats().UpdatesWritten > before })
			}
			d.waitStatus(t, id, "a", tt.want)
			// The last update was written; nothing can change it later.
			if s, _ := d.status(t, id, "a"); s != tt.want {
				t.Errorf("status = %s, want %s", s, tt.want)
			}
		})
	}
}

func TestMySQLConcurrentLog(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{})
	const n = 500
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		ids[i] = testID(t)
		uids := []string{fmt.Sprintf("u%d", i%37)}
		if i%10 == 0 {
			uids = append(uids, "multi")
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			errs[i] = l.Log(ctx, Log{ID: ids[i], UIDs: uids, Message: "m" + ids[i]})
		})
	}
	wg.Wait()
	want := 0
	for i, err := range errs {
		if err != nil {
			t.Errorf("Log(%s) = %v", ids[i], err)
			continue
		}
		rows := d.rows(t, ids[i])
		wantRows := 1 + map[bool]int{true: 1}[i%10 == 0]
		if len(rows) != wantRows {
			t.Errorf("rows of %s: %d, want %d", ids[i], len(rows), wantRows)
		}
		want += wantRows
	}
	if got := d.count(t, "1"); got != want {
		t.Errorf("%d rows, want %d", got, want)
	}
	st := l.Stats()
	if st.Rows != uint64(want) {
		t.Errorf("Stats().Rows = %d, want %d", st.Rows, want)
	}
	// Group commit: 500 concurrent calls need far fewer statements.
	if st.Batches > n/4 {
		t.Errorf("Stats().Batches = %d for %d concurrent calls: not grouped", st.Batches, n)
	}
	t.Logf("%d rows in %d batches", st.Rows, st.Batches)
}

func TestMySQLLargeMessages(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{})
	// 64 KiB and more of multibyte UTF-8, emoji and characters the
	// driver escapes.
	unit := "é世😀'\\\"\n\x00"
	big := func(n int) string { return strings.Repeat(unit, n/len(unit)+1) }
	sizes := []int{64 << 10, 1 << 20, 4 << 20}
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			id, msg := testID(t), big(size)
			logOK(t, l, Log{ID: id, UIDs: []string{"u😀"}, Message: msg})
			if got := d.rows(t, id)["u😀"].Message; got != msg {
				t.Fatalf("message of %d bytes read back as %d bytes", len(msg), len(got))
			}
		})
	}

	// 24 concurrent 1 MiB messages, 3 of them multicast to 2 uids: more than
	// one max_allowed_packet (16 MiB), so batches must be split.
	t.Run("batch over max_allowed_packet", func(t *testing.T) {
		before := l.Stats()
		msg := "batch " + big(1<<20)
		var wg sync.WaitGroup
		ids := make([]string, 24)
		errs := make([]error, len(ids))
		for i := range ids {
			ids[i] = testID(t)
			uids := []string{"a"}
			if i%8 == 0 {
				uids = append(uids, "b")
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				errs[i] = l.Log(ctx, Log{ID: ids[i], UIDs: uids, Message: msg})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Log(%s) = %v", ids[i], err)
			}
		}
		if n := d.count(t, "message = ?", msg); n != 27 {
			t.Errorf("%d rows with the message, want 27", n)
		}
		st := l.Stats()
		t.Logf("%d rows in %d batches", st.Rows-before.Rows, st.Batches-before.Batches)
	})
}

func TestBuildInsertsSplits(t *testing.T) {
	l := &MySQLLogger{cfg: MySQLConfig{BatchSize: 4}, maxStmt: 4000}
	var reqs []*logRequest
	for i := range 10 {
		r, err := l.newRequest([]Log{{ID: fmt.Sprintf("id%02d", i), UIDs: []string{"a", "b"}, Message: strings.Repeat("'", 300*(i%3))}})
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, r)
	}
	stmts := l.buildInserts(reqs)
	rows := 0
	for _, s := range stmts {
		n := len(s.args) / 5
		rows += n
		if n < 1 || n > 4 {
			t.Errorf("statement of %d rows, want 1 to 4", n)
		}
		if got := strings.Count(s.query, "(?,?,?,0,?,?)"); got != n {
			t.Errorf("statement has %d row placeholders for %d rows", got, n)
		}
		// The statement as the driver sends it, arguments quoted in.
		size := len(insertPrefix)
		for i := 0; i < len(s.args); i += 5 {
			size += len(insertRow) + 1 + quotedLen(s.args[i].(string)) + quotedLen(s.args[i+1].(string)) +
				quotedLen(s.args[i+2].(string)) + 2*quotedTimeLen
		}
		if size > l.maxStmt {
			t.Errorf("statement of %d bytes, over %d", size, l.maxStmt)
		}
	}
	if rows != 20 {
		t.Errorf("%d rows in %d statements, want 20", rows, len(stmts))
	}
}

func TestBuildUpdatesSplits(t *testing.T) {
	l := &MySQLLogger{cfg: MySQLConfig{UpdateBatchSize: 5}, maxStmt: 700}
	var keys []any
	for i := range 23 {
		keys = append(keys, fmt.Sprintf("id%02d", i), strings.Repeat("u", 10*(i%4)))
	}
	stmts := l.buildUpdates(StatusDelivered, "d.status <> 1", time.Now(), keys)
	pairs := 0
	for _, s := range stmts {
		n := (len(s.args) - 1) / 2
		pairs += n
		if n < 1 || n > 5 {
			t.Errorf("statement of %d rows, want 1 to 5", n)
		}
		if got := strings.Count(s.query, "?"); got != len(s.args) {
			t.Errorf("statement has %d placeholders for %d arguments", got, len(s.args))
		}
		size := len(s.query) - len(s.args) + quotedTimeLen
		for _, a := range s.args[:len(s.args)-1] {
			size += quotedLen(a.(string))
		}
		if size > l.maxStmt {
			t.Errorf("statement of %d bytes, over %d", size, l.maxStmt)
		}
	}
	if pairs != 23 {
		t.Errorf("%d rows in %d statements, want 23", pairs, len(stmts))
	}
}

func TestQuotedLen(t *testing.T) {
	for _, s := range []string{"", "abc", "a'b", `\`, "\x00\n\r\x1a'\"\\", "😀"} {
		if got, want := quotedLen(s), len(fmt.Sprintf("'%s'", escapeForTest(s))); got != want {
			t.Errorf("quotedLen(%q) = %d, want %d", s, got, want)
		}
	}
}

// escapeForTest escapes s as the driver does with backslashes.
func escapeForTest(s string) string {
	r := strings.NewReplacer("\x00", `\0`, "\n", `\n`, "\r", `\r`, "\x1a", `\Z`, "'", `\'`, `"`, `\"`, `\`, `\\`)
	return r.Replace(s)
}

func TestMySQLCloseFlushes(t *testing.T) {
	d := newTestDB(t)
	// Rows first, with a logger that writes at once.
	l1 := newTestLogger(t, d.DSN, MySQLConfig{BatchInterval: time.Millisecond})
	ids := make([]string, 300)
	for i := range ids {
		ids[i] = testID(t)
		logOK(t, l1, Log{ID: ids[i], UIDs: []string{"u"}, Message: "m"})
	}

	// A logger that would wait an hour to write anything: only Close does.
	l := newTestLogger(t, d.DSN, MySQLConfig{BatchInterval: time.Hour, BatchSize: 1000, UpdateInterval: time.Hour, UpdateBatchSize: 1000})
	for i, id := range ids {
		l.Update(id, "u", []Status{StatusDelivered, StatusFailed}[i%2])
	}
	// A message in a batch that waits for its interval: handed to the
	// collector as Log does, so that it is surely taken before Close.
	pending := testID(t)
	r, err := l.newRequest([]Log{{ID: pending, UIDs: []string{"u"}, Message: "m"}})
	if err != nil {
		t.Fatal(err)
	}
	l.reqs <- r

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := <-r.done; err != nil {
		t.Errorf("Log pending at Close = %v, want nil (flushed)", err)
	}
	if n := d.count(t, "id = ?", pending); n != 1 {
		t.Errorf("%d rows of the message pending at Close, want 1", n)
	}
	if got := d.count(t, "status = 1"); got != 150 {
		t.Errorf("%d delivered rows after Close, want 150", got)
	}
	if got := d.count(t, "status = 2"); got != 150 {
		t.Errorf("%d failed rows after Close, want 150", got)
	}
	if err := l.Log(ctx, Log{ID: testID(t), UIDs: []string{"u"}, Message: "m"}); err == nil {
		t.Error("Log after Close = nil, want an error")
	}
	if err := l.Ready(ctx); err == nil {
		t.Error("Ready after Close = nil, want an error")
	}
	before := l.DroppedUpdates()
	l.Update(ids[0], "u", StatusDelivered)
	if got := l.DroppedUpdates(); got != before+1 {
		t.Errorf("DroppedUpdates after an Update after Close = %d, want %d", got, before+1)
	}
	if err := l.Close(ctx); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
}

func TestMySQLAbandonedLog(t *testing.T) {
	d := newTestDB(t)
	l := newTestLogger(t, d.DSN, MySQLConfig{BatchInterval: 300 * time.Millisecond})

	// Given up before its batch was written: no row.
	gaveUp := testID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	err := l.Log(ctx, Log{ID: gaveUp, UIDs: []string{"u"}, Message: "m"})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Log with a short deadline = %v, want DeadlineExceeded", err)
	}
	logOK(t, l, Log{ID: testID(t), UIDs: []string{"u"}, Message: "m"}) // the next batch
	if n := d.count(t, "id = ?", gaveUp); n != 0 {
		t.Errorf("%d rows of an abandoned Log, want 0", n)
	}

	// Given up while its rows were being committed (a writer settles it
	// after Log returned): the committed rows are marked failed. So is a
	// row of a write that failed where the commit is unknown.
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"committed after Log gave up", nil},
		{"commit unknown", errors.New("invalid connection")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := testID(t)
			logOK(t, l, Log{ID: id, UIDs: []string{"a", "b"}, Message: "m"})
			r, err := l.newRequest([]Log{{ID: id, UIDs: []string{"a", "b"}, Message: "m"}})
			if err != nil {
				t.Fatal(err)
			}
			if tc.err == nil {
				r.state.Store(reqAbandoned)
			}
			l.settle([]*logRequest{r}, tc.err)
			if tc.err != nil {
				if err := <-r.done; err == nil {
					t.Error("settled with an error, Log got nil")
				}
			}
			d.waitStatus(t, id, "a", StatusFailed)
			d.waitStatus(t, id, "b", StatusFailed)
		})
	}
}

// TestMySQLLogSeveral: the messages of one Log call (a /send/batch) commit
// together, in one transaction even when they need several statements, and
// one bad message refuses them all.
func TestMySQLLogSeveral(t *testing.T) {
	d := newTestDB(t)
	// BatchSize 4: 10 messages of 2 uids take 5 statements.
	l := newTestLogger(t, d.DSN, MySQLConfig{BatchSize: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ms []Log
	for i := range 10 {
		ms = append(ms, Log{ID: testID(t), UIDs: []string{"a", "b"}, Message: fmt.Sprint("m", i)})
	}
	if err := l.Log(ctx, ms...); err != nil {
		t.Fatalf("Log(10 messages) = %v", err)
	}
	for _, m := range ms {
		if got := d.rows(t, m.ID); len(got) != 2 || got["a"].Message != m.Message {
			t.Errorf("rows of %s = %v, want 2 with message %q", m.ID, got, m.Message)
		}
	}

	bad := []Log{
		{ID: testID(t), UIDs: []string{"a"}, Message: "good"},
		{ID: testID(t), UIDs: []string{"a"}, Message: "x\xffy"},
	}
	if err := l.Log(ctx, bad...); err == nil {
		t.Fatal("Log(good, invalid UTF-8) = nil, want an error")
	}
	if got := d.rows(t, bad[0].ID); len(got) != 0 {
		t.Errorf("the good message of a refused call left rows %v", got)
	}
}
