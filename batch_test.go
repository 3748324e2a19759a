package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"

	"go-pusher/internal/testutil"
)

// post sends body to path with the API key and header, and returns the
// status, the answer's headers and its body.
func (ts *testServer) post(path, contentType, body string, header http.Header) (int, http.Header, string) {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.opsURL()+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	maps.Copy(req.Header, header)
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := ts.client.Do(req)
	if err != nil {
		ts.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// batchResult is one entry of a /send/batch answer.
type batchResult struct {
	ID       string   `json:"id"`
	Sent     []string `json:"sent"`
	NotFound []string `json:"not_found"`
	Status   int      `json:"status"`
	Error    string   `json:"error"`
	Replayed bool     `json:"replayed"`
}

// batch posts a /send/batch of items and wants a 200 with one result per
// item.
func (ts *testServer) batch(items ...map[string]any) []batchResult {
	ts.t.Helper()
	b, err := json.Marshal(map[string]any{"messages": items})
	if err != nil {
		ts.t.Fatal(err)
	}
	code, _, body := ts.post("/send/batch", "application/json", string(b), nil)
	if code != http.StatusOK {
		ts.t.Fatalf("/send/batch = %d %q, want 200", code, body)
	}
	var answer struct{ Results []batchResult }
	if err := json.Unmarshal([]byte(body), &answer); err != nil || len(answer.Results) != len(items) {
		ts.t.Fatalf("/send/batch answer %q: want %d results (%v)", body, len(items), err)
	}
	return answer.Results
}

func unicastItem(uid, msg string) map[string]any { return map[string]any{"uid": uid, "message": msg} }

func TestBatchSends(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		u1a, u1b, u2 := ts.dial("u1"), ts.dial("u1"), ts.dial("u2")
		res := ts.batch(
			unicastItem("u1", "a"),
			map[string]any{"uids": []string{"u1", "nobody", "u2"}, "message": "b"},
			unicastItem("nobody", "c"),
			unicastItem("u1", "d"),
			map[string]any{"uids": []string{"nobody"}, "message": "e"},
		)
		if len(res[0].ID) != 20 || res[0].Sent != nil || res[0].Status != 0 {
			t.Errorf("unicast result %+v, want just an id", res[0])
		}
		if len(res[1].ID) != 20 || fmt.Sprint(res[1].Sent, res[1].NotFound) != "[u1 u2] [nobody]" {
			t.Errorf("multicast result %+v, want sent [u1 u2], not_found [nobody]", res[1])
		}
		if res[2].Status != http.StatusNotFound || res[2].Error != "client not found: nobody" || res[2].ID != "" {
			t.Errorf("offline unicast result %+v, want status 404 and the /send reason", res[2])
		}
		if len(res[4].ID) != 20 || len(res[4].Sent) != 0 || fmt.Sprint(res[4].NotFound) != "[nobody]" {
			t.Errorf("offline multicast result %+v, want an id, sent [] and not_found [nobody]", res[4])
		}
		ids := map[string]bool{}
		for _, i := range []int{0, 1, 3, 4} {
			ids[res[i].ID] = true
		}
		if len(ids) != 4 {
			t.Errorf("ids %v: want 4 distinct", ids)
		}
		for _, want := range []string{"a", "b", "d"} {
			if got := readText(t, u1a); got != want {
				t.Fatalf("u1's first connection got %q, want %q (item order)", got, want)
			}
			if got := readText(t, u1b); got != want {
				t.Fatalf("u1's second connection got %q, want %q", got, want)
			}
		}
		if got := readText(t, u2); got != "b" {
			t.Fatalf("u2 got %q, want b", got)
		}
		if n := ts.msgLog.logCalls(); n != 1 {
			t.Errorf("the batch took %d message log writes, want 1", n)
		}
		if logs := ts.msgLog.logged(); len(logs) != 3 {
			t.Errorf("logged %d messages, want 3 (a, b to u1 and u2, d): %+v", len(logs), logs)
		}
		if got := testutil.Counter(t, ts.metrics.batchItems); got != 5 {
			t.Errorf("pusher_batch_items_total = %v, want 5", got)
		}
		if got := testutil.Counter(t, ts.metrics.batchCounter(http.StatusOK)); got != 1 {
			t.Errorf("pusher_batch_requests_total{code=200} = %v, want 1", got)
		}
		assertNothingPushed(t, ts, u2, "u2")
	})
}

func TestBatchBadInput(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, append(front, "-max-message-size", "10", "-max-multicast", "2", "-max-batch", "3", "-max-batch-bytes", "400")...))
		conn := ts.dial("u1")
		js := "application/json"
		ok := `{"uid":"u1","message":"ok"}`
		tests := []struct {
			name, contentType, body string
			code                    int
			reason                  string
		}{
			{"form", "application/x-www-form-urlencoded", "uid=u1&message=hi", 415, "Content-Type must be application/json"},
			{"no messages", js, `{}`, 400, "messages is required"},
			{"empty", js, `{"messages":[]}`, 400, "messages is empty"},
			{"malformed", js, `{"messages":[` + ok, 400, "malformed JSON at byte 40: unexpected EOF"},
			{"too many items", js, `{"messages":[` + strings.Repeat(ok+",", 3) + ok + `]}`, 413, "too many messages: 4, at most 3"},
			{"body too large", js, `{"messages":[` + ok + strings.Repeat(" ", 400) + `]}`, 413, "request body larger than 400 bytes"},
			{"item without uid", js, `{"messages":[` + ok + `,{"message":"m"}]}`, 400, "messages[1]: uid is required"},
			{"item without message", js, `{"messages":[` + ok + `,` + ok + `,{"uid":"u1"}]}`, 400, "messages[2]: message is required"},
			{"item message too large", js, `{"messages":[` + ok + `,{"uid":"u1","message":"12345678901"}]}`, 413, "messages[1]: message too large: 11 bytes, at most 10"},
			{"item too many uids", js, `{"messages":[{"uids":["a","b","c"],"message":"m"}]}`, 413, "messages[0]: too many uids: 3, at most 2"},
			{"item invalid utf8", js, "{\"messages\":[{\"uid\":\"u1\",\"message\":\"\xff\"}]}", 400, "body is not valid UTF-8"},
			{"item unknown field", js, `{"messages":[` + ok + `,{"uid":"u1","msg":"m"}]}`, 400, `messages[1]: malformed JSON: unknown field "msg"`},
			{"item bad key", js, `{"messages":[{"uid":"u1","message":"m","idempotency_key":""}]}`, 400, "messages[0]: idempotency key must have 1 to 128 bytes"},
			{"item repeated key", js, `{"messages":[{"uid":"u1","message":"m","idempotency_key":"k"},{"uid":"u1","message":"m","idempotency_key":"k"}]}`, 400, "messages[1]: idempotency_key repeats that of messages[0]"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, _, body := ts.post("/send/batch", tt.contentType, tt.body, nil)
				if code != tt.code || body != tt.reason+"\n" {
					t.Errorf("/send/batch %q = %d %q, want %d %q", tt.body, code, body, tt.code, tt.reason+"\n")
				}
			})
		}
		if code, body := ts.do(http.MethodPost, "/send/batch", js, `{"messages":[`+ok+`]}`, ""); code != http.StatusUnauthorized {
			t.Errorf("/send/batch without the API key = %d %q, want 401", code, body)
		}
		req, err := http.NewRequest(http.MethodGet, ts.opsURL()+"/send/batch", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ts.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
			t.Errorf("GET /send/batch = %d, Allow %q; want 405 and Allow: POST", resp.StatusCode, resp.Header.Get("Allow"))
		}
		if logs := ts.msgLog.logged(); len(logs) != 0 {
			t.Errorf("refused batches logged %d messages: %+v", len(logs), logs)
		}
		assertNothingPushed(t, ts, conn, "u1")
	})
}

func TestBatchLogFailureSendsNothing(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u1")
	ts.msgLog.setErr(errors.New("database on fire"))
	code, _, body := ts.post("/send/batch", "application/json", `{"messages":[{"uid":"u1","message":"a"},{"uid":"u1","message":"b"}]}`, nil)
	if code != http.StatusServiceUnavailable || strings.Contains(body, "fire") {
		t.Fatalf("/send/batch with the log down = %d %q, want 503 without the log's error", code, body)
	}
	ts.msgLog.setErr(nil)
	assertNothingPushed(t, ts, conn, "u1")
}

// TestBatchOffsetsFollowItemOrder: a uid's messages of one batch get
// consecutive offsets in item order.
func TestBatchOffsetsFollowItemOrder(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dialStream("u", "format=json")
	var items []map[string]any
	for i := range 50 {
		items = append(items, unicastItem("u", fmt.Sprint(i)))
	}
	res := ts.batch(items...)
	first := readFrame(t, conn)
	for i := range 50 {
		f := first
		if i > 0 {
			f = readFrame(t, conn)
		}
		if f.Message != fmt.Sprint(i) || f.ID != res[i].ID {
			t.Fatalf("frame %d = %+v, want message %d with id %s", i, f, i, res[i].ID)
		}
		if p, p0 := f.pos(t), first.pos(t); p.Epoch != p0.Epoch || p.N != p0.N+uint64(i) {
			t.Fatalf("frame %d at %s, want %d after %s", i, f.Offset, i, first.Offset)
		}
	}
}
