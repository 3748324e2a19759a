package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
)

// assertNothingPushed checks that conn got nothing before a marker sent
// now: the first message it reads must be the marker.
func assertNothingPushed(t *testing.T, ts *testServer, conn *websocket.Conn, uid string) {
	t.Helper()
	ts.sendOK(uid, "marker")
	if got := readText(t, conn); got != "marker" {
		t.Fatalf("connection got %q before the marker: a refused /send pushed something", got)
	}
}

// eachFront runs test on each listener /send is served on: net/http on
// the public listener, fasthttp on the internal one (-internal-addr);
// front is the flags that choose it.
func eachFront(t *testing.T, test func(t *testing.T, front ...string)) {
	t.Helper()
	for _, f := range []struct {
		name string
		args []string
	}{{"public", nil}, {"internal", []string{"-internal-addr", "127.0.0.1:0"}}} {
		t.Run(f.name, func(t *testing.T) { test(t, f.args...) })
	}
}

func TestSendBodies(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		conn := ts.dial("u1")

		var mp bytes.Buffer
		mw := multipart.NewWriter(&mp)
		if err := errors.Join(mw.WriteField("uid", "u1"), mw.WriteField("message", "from multipart"), mw.Close()); err != nil {
			t.Fatal(err)
		}

		tests := []struct {
			name, contentType, body, want string
		}{
			{"form", "application/x-www-form-urlencoded", "uid=u1&message=from+form", "from form"},
			{"json", "application/json", `{"uid":"u1","message":"from json"}`, "from json"},
			{"json charset", "application/json; charset=utf-8", `{"uid":"u1","message":"with charset"}`, "with charset"},
			{"json multicast", "application/json", `{"uids":["u1"],"message":"multicast of one"}`, "multicast of one"},
			{"multipart", mw.FormDataContentType(), mp.String(), "from multipart"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, body := ts.send(tt.contentType, tt.body)
				if code != http.StatusOK {
					t.Fatalf("send = %d %q, want 200", code, body)
				}
				var reply struct{ ID string }
				if err := json.Unmarshal([]byte(body), &reply); err != nil || len(reply.ID) != 20 {
					t.Fatalf("reply %q: want JSON with a 20-character id (%v)", body, err)
				}
				if got := readText(t, conn); got != tt.want {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			})
		}
	})
}

func TestSendQueryStringWithoutBody(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		conn := ts.dial("u1")
		code, body := ts.do(http.MethodPost, "/send?uid=u1&message=from+query", "", "", "Bearer "+testAPIKey)
		if code != http.StatusOK {
			t.Fatalf("send = %d %q, want 200", code, body)
		}
		if got := readText(t, conn); got != "from query" {
			t.Fatalf("got %q, want %q", got, "from query")
		}
	})
}

func TestSendReplyIsJSONWithUniqueIDs(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ts.dial("u1")
	seen := map[string]bool{}
	for range 50 {
		id := ts.sendOK("u1", "x")
		if seen[id] {
			t.Fatalf("id %q given twice", id)
		}
		seen[id] = true
	}
	req, _ := http.NewRequest(http.MethodPost, ts.opsURL()+"/send", strings.NewReader("uid=u1&message=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
}

// TestSendBadInput: every bad input gets its status and a one-line
// reason, and nothing is logged or pushed.
func TestSendBadInput(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, append(front, "-max-message-size", "10", "-max-multicast", "2")...))
		conn := ts.dial("u1")
		form := "application/x-www-form-urlencoded"
		js := "application/json"
		tests := []struct {
			name, contentType, body string
			code                    int
			reason                  string
		}{
			{"no uid form", form, "message=hi", 400, "uid is required"},
			{"empty uid form", form, "uid=&message=hi", 400, "uid is empty"},
			{"no uid json", js, `{"message":"hi"}`, 400, "uid is required"},
			{"uid too long", form, "uid=" + strings.Repeat("u", 129) + "&message=hi", 400, "uid is longer than 128 bytes"},
			{"uid twice", form, "uid=u1&uid=u2&message=hi", 400, "uid must be given once"},
			{"no message", form, "uid=u1", 400, "message is required"},
			{"empty message", js, `{"uid":"u1","message":""}`, 400, "message is required"},
			{"invalid utf8 form", form, "uid=u1&message=%FF%FE", 400, "message is not valid UTF-8"},
			{"invalid utf8 json", js, "{\"uid\":\"u1\",\"message\":\"\xff\"}", 400, "body is not valid UTF-8"},
			{"message too large", form, "uid=u1&message=" + strings.Repeat("a", 11), 413, "message too large: 11 bytes, at most 10"},
			{"message too large multibyte", js, `{"uid":"u1","message":"ééééé世"}`, 413, "message too large: 13 bytes, at most 10"},
			{"malformed json", js, `{"uid":"u1",`, 400, "malformed JSON at byte 12: unexpected EOF"},
			{"json not object", js, `["u1"]`, 400, "malformed JSON: want an object, not an array"},
			{"json wrong type", js, `{"uid":1,"message":"hi"}`, 400, "malformed JSON: uid must be a string, not a number"},
			{"json uids not strings", js, `{"uids":["a",2],"message":"hi"}`, 400, "malformed JSON: uids must be an array of strings"},
			{"json unknown field", js, `{"uid":"u1","msg":"hi"}`, 400, `malformed JSON: unknown field "msg"`},
			{"uid with a newline", js, `{"uid":"a\nb","message":"hi"}`, 400, "uid contains a control character"},
			{"uids with an escape", js, `{"uids":["a","\u001b[31m"],"message":"hi"}`, 400, "uids[1] contains a control character"},
			{"malformed form", form, "uid=u1&message=%zz", 400, `malformed form: invalid URL escape "%zz"`},
			{"json trailing", js, `{"uid":"u1","message":"hi"} {}`, 400, "malformed JSON at byte 28: invalid character '{' after top-level value"},
			{"uid and uids", js, `{"uid":"u1","uids":["u1"],"message":"hi"}`, 400, "give uid or uids, not both"},
			{"uids empty", js, `{"uids":[],"message":"hi"}`, 400, "uids is empty"},
			{"uids bad member", js, `{"uids":["u1",""],"message":"hi"}`, 400, "uids[1] is empty"},
			{"too many uids", js, `{"uids":["a","b","c"],"message":"hi"}`, 413, "too many uids: 3, at most 2"},
			{"unknown content type", "text/plain", "uid=u1&message=hi", 415, `unsupported Content-Type "text/plain": use application/json, application/x-www-form-urlencoded or multipart/form-data`},
			{"body without content type", "", "uid=u1&message=hi", 415, "Content-Type is required with a body"},
			{"malformed content type", "application/json; ===", `{}`, 415, "malformed Content-Type"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, body := ts.send(tt.contentType, tt.body)
				if code != tt.code || body != tt.reason+"\n" {
					t.Errorf("send(%q) = %d %q, want %d %q", tt.body, code, body, tt.code, tt.reason+"\n")
				}
			})
		}
		if logs := ts.msgLog.logged(); len(logs) != 0 {
			t.Errorf("refused requests logged %d messages: %+v", len(logs), logs)
		}
		assertNothingPushed(t, ts, conn, "u1")
	})
}

func TestSendDuplicateUIDsCountOnce(t *testing.T) {
	ts := startServer(t, testConfig(t, "-max-multicast", "2"))
	conn := ts.dial("a")
	code, body := ts.sendJSON(map[string]any{"uids": []string{"a", "b", "a", "b", "a"}, "message": "once"})
	if code != http.StatusOK {
		t.Fatalf("send = %d %q, want 200 (3 duplicates of 2 uids are within -max-multicast 2)", code, body)
	}
	if got := readText(t, conn); got != "once" {
		t.Fatalf("got %q, want once", got)
	}
	assertNothingPushed(t, ts, conn, "a") // "once" arrived once
}

func TestSendUnicastOfflineIs404(t *testing.T) {
	ts := startServer(t, testConfig(t))
	code, body := ts.send("application/x-www-form-urlencoded", "uid=nobody&message=hi")
	if code != http.StatusNotFound || body != "client not found: nobody\n" {
		t.Fatalf("send = %d %q, want 404 %q", code, body, "client not found: nobody\n")
	}
	if logs := ts.msgLog.logged(); len(logs) != 0 {
		t.Errorf("a 404 logged %+v", logs)
	}
}

func TestSendMulticast(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c1, c2, c2b := ts.dial("u1"), ts.dial("u2"), ts.dial("u2")

	code, body := ts.sendJSON(map[string]any{"uids": []string{"u1", "u3", "u2", "u1"}, "message": "to many"})
	if code != http.StatusOK {
		t.Fatalf("send = %d %q, want 200", code, body)
	}
	var reply struct {
		ID       string   `json:"id"`
		Sent     []string `json:"sent"`
		NotFound []string `json:"not_found"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(reply.Sent) != "[u1 u2]" || fmt.Sprint(reply.NotFound) != "[u3]" || reply.ID == "" {
		t.Fatalf("reply = %+v, want sent [u1 u2], not_found [u3]", reply)
	}
	for _, c := range []*websocket.Conn{c1, c2, c2b} {
		if got := readText(t, c); got != "to many" {
			t.Errorf("got %q, want %q", got, "to many")
		}
	}
	logs := ts.msgLog.logged()
	if len(logs) != 1 || fmt.Sprint(logs[0].UIDs) != "[u1 u2]" || logs[0].ID != reply.ID {
		t.Fatalf("logged %+v, want one log of %s for [u1 u2]", logs, reply.ID)
	}

	// All offline: still 200, nothing logged.
	code, body = ts.sendJSON(map[string]any{"uids": []string{"x", "y"}, "message": "nobody"})
	if code != http.StatusOK || !strings.Contains(body, `"sent":[]`) || !strings.Contains(body, `"not_found":["x","y"]`) {
		t.Fatalf("send to offline uids = %d %q, want 200 with sent [] and not_found [x y]", code, body)
	}
	if n := len(ts.msgLog.logged()); n != 1 {
		t.Errorf("an all-offline multicast was logged (%d logs)", n)
	}
}

// TestSendLogFailureSendsNothing: a message is never pushed unlogged.
func TestSendLogFailureSendsNothing(t *testing.T) {
	ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0"))
	conn := ts.dial("u1")
	ts.msgLog.setErr(errors.New("database on fire"))
	code, body := ts.send("application/x-www-form-urlencoded", "uid=u1&message=unlogged")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("send = %d %q, want 503", code, body)
	}
	if strings.Contains(body, "fire") {
		t.Errorf("reply %q leaks the log's internal error", body)
	}
	if code, body := ts.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "database on fire") {
		t.Errorf("/readyz on the internal listener = %d %q, want 503 naming the log's error", code, body)
	}
	ts.msgLog.setErr(nil)
	assertNothingPushed(t, ts, conn, "u1")
}

// TestReadyMetricFollowsReadyz: pusher_ready is what /readyz says, so
// that an alert rule sees a dependency down.
func TestReadyMetricFollowsReadyz(t *testing.T) {
	ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0"))
	if got := ts.metric("pusher_ready"); got != 1 {
		t.Fatalf("pusher_ready = %v while ready, want 1", got)
	}
	ts.msgLog.setErr(errors.New("database on fire"))
	waitFor(t, "pusher_ready 0 with the log down", func() bool { return ts.metric("pusher_ready") == 0 })
	if code, _ := ts.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d while pusher_ready is 0, want 503", code)
	}
	ts.msgLog.setErr(nil)
	waitFor(t, "pusher_ready 1 again", func() bool { return ts.metric("pusher_ready") == 1 })
}

func TestSendRequestsCountedByCode(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ts.send("application/x-www-form-urlencoded", "uid=nobody&message=hi")
	ts.do(http.MethodGet, "/send", "", "", "")
	ts.do(http.MethodPost, "/send", "", "", "")
	for code, want := range map[string]float64{"404": 1, "405": 1, "401": 1, "200": 0} {
		if got := testutil.Counter(t, ts.metrics.sendRequests.WithLabelValues(code)); got != want {
			t.Errorf("pusher_send_requests_total{code=%q} = %v, want %v", code, got, want)
		}
	}
}

func TestInternalAddrSeparatesOperations(t *testing.T) {
	cfg := testConfig(t, "-internal-addr", "127.0.0.1:0")
	ts := startServer(t, cfg)
	public := "http://" + ts.Addr()
	for _, p := range []string{"/send", "/metrics", "/healthz", "/readyz"} {
		resp, err := ts.client.Get(public + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("public %s = %d, want 404", p, resp.StatusCode)
		}
	}
	if code, _ := ts.get("/healthz"); code != http.StatusOK {
		t.Errorf("internal /healthz = %d, want 200", code)
	}
	resp, err := ts.client.Get("http://" + ts.InternalAddr() + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("internal /ws = %d, want 404", resp.StatusCode)
	}
	conn := ts.dial("u")
	ts.sendOK("u", "through internal")
	if got := readText(t, conn); got != "through internal" {
		t.Fatalf("got %q", got)
	}
}

func TestHealthAndReady(t *testing.T) {
	ts := startServer(t, testConfig(t))
	if code, body := ts.get("/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
	if code, body := ts.get("/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz = %d %q, want 200 ready", code, body)
	}
}

func TestSendParsesFormFieldsNotFiles(t *testing.T) {
	eachFront(t, func(t *testing.T, front ...string) {
		ts := startServer(t, testConfig(t, front...))
		conn := ts.dial("u1")
		var mp bytes.Buffer
		mw := multipart.NewWriter(&mp)
		if err := mw.WriteField("uid", "u1"); err != nil {
			t.Fatal(err)
		}
		fw, err := mw.CreateFormFile("message", "m.txt")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write([]byte("a file is not the message")); err != nil {
			t.Fatal(err)
		}
		mw.Close()
		code, body := ts.send(mw.FormDataContentType(), mp.String())
		if code != http.StatusBadRequest || body != "message is required\n" {
			t.Fatalf("send with message as a file = %d %q, want 400 message is required", code, body)
		}
		assertNothingPushed(t, ts, conn, "u1")
	})
}

// countingLogger counts the readiness checks that reach the message log.
type countingLogger struct {
	*recordingLogger
	mu     sync.Mutex
	checks int
}

func (l *countingLogger) Ready(ctx context.Context) error {
	l.mu.Lock()
	l.checks++
	l.mu.Unlock()
	return l.recordingLogger.Ready(ctx)
}

// TestReadyzOnThePublicListener: without -internal-addr /readyz is on the
// listener browsers reach, so a failure answers a generic reason and the
// details (hosts, errors) go to the log, once; and a flood of requests
// asks the dependencies about once a second, not once per request.
func TestReadyzOnThePublicListener(t *testing.T) {
	l := &countingLogger{recordingLogger: newRecordingLogger()}
	l.setErr(errors.New("dial tcp 10.1.2.3:3306: connection refused"))
	ts := startServerLog(t, testConfig(t), l)
	start := time.Now()
	for range 50 {
		code, body := ts.get("/readyz")
		if code != http.StatusServiceUnavailable || strings.Contains(body, "10.1.2.3") || !strings.HasPrefix(body, "not ready") {
			t.Fatalf("/readyz = %d %q, want 503 with a generic reason", code, body)
		}
	}
	l.mu.Lock()
	checks := l.checks
	l.mu.Unlock()
	if most := int(time.Since(start)/readinessTTL) + 1; checks > most {
		t.Errorf("50 /readyz in %v asked the message log %d times, want at most %d", time.Since(start), checks, most)
	}
	logs := ts.logBuf.String()
	if n := strings.Count(logs, `msg="not ready"`); n != 1 || !strings.Contains(logs, "10.1.2.3") {
		t.Errorf("the log says why %d times, want once with the details:\n%s", n, logs)
	}
}
