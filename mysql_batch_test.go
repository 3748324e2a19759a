package main

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"go-pusher/internal/testutil"
	"go-pusher/message"
)

// TestMySQLBatch: a batch is one group commit: every item's rows are
// there, queued then delivered, in one INSERT transaction.
func TestMySQLBatch(t *testing.T) {
	d := newMySQLTestDB(t)
	ts := startMySQLServer(t, d.DSN, "-mysql-batch-size", "64")
	a, b := ts.dial("a"), ts.dial("b")
	var items []map[string]any
	for i := range 100 {
		items = append(items, unicastItem("a", fmt.Sprint(i)))
	}
	items = append(items, map[string]any{"uids": []string{"a", "b", "nobody"}, "message": "all"}, unicastItem("nobody", "x"))
	res := ts.batch(items...)
	for i := range 100 {
		if got := readText(t, a); got != fmt.Sprint(i) {
			t.Fatalf("a got %q, want %d", got, i)
		}
	}
	if got := readText(t, a); got != "all" {
		t.Fatalf("a got %q, want all", got)
	}
	if got := readText(t, b); got != "all" {
		t.Fatalf("b got %q, want all", got)
	}
	if n := d.count(t, "1"); n != 102 {
		t.Errorf("%d rows, want 102 (100 unicasts, a multicast to 2 online uids)", n)
	}
	d.waitStatus(t, res[99].ID, "a", message.StatusDelivered)
	d.waitStatus(t, res[100].ID, "b", message.StatusDelivered)
	// 102 rows at 64 per INSERT: one transaction of 2 statements, counted
	// as one batch.
	if got := ts.metric("pusher_mysql_batches_total"); got != 1 {
		t.Errorf("pusher_mysql_batches_total = %v, want 1 (one group commit for the batch)", got)
	}
}

// TestMySQLBatchOutage: with the database down a batch is a 503 and
// nothing of it is sent.
func TestMySQLBatchOutage(t *testing.T) {
	d := newMySQLTestDB(t)
	p := testutil.StartProxy(t, d.Base.Addr)
	ts := startMySQLServer(t, d.DSNVia(p.Addr()), "-message-log-timeout", "1s")
	conn := ts.dial("a")
	p.SetMode(testutil.Cut)
	start := time.Now()
	code, _, body := ts.post("/send/batch", "application/json", `{"messages":[{"uid":"a","message":"lost1"},{"uid":"a","message":"lost2"}]}`, nil)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/send/batch with the database down = %d %q, want 503", code, body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("503 after %v, -message-log-timeout 1s", took)
	}
	p.SetMode(testutil.Forward)
	waitFor(t, "send after the outage", func() bool {
		code, _ := ts.send("application/x-www-form-urlencoded", "uid=a&message=after")
		return code == http.StatusOK
	})
	if got := readText(t, conn); got != "after" {
		t.Fatalf("first message after the outage = %q, want after (a refused batch was pushed)", got)
	}
	waitFor(t, "refused messages not queued", func() bool {
		return d.count(t, "message LIKE 'lost%' AND status <> ?", message.StatusFailed) == 0
	})
}
