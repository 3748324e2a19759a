package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"go-pusher/message"
)

const (
	testSecret = "test-secret-test-secret-test-secret"
	testAPIKey = "test-api-key"
)

// testEnv is the environment every test server starts from.
func testEnv(extra map[string]string) func(string) string {
	env := map[string]string{"JWT_SECRET": testSecret, "PUSHER_API_KEY": testAPIKey}
	maps.Copy(env, extra)
	return func(k string) string { return env[k] }
}

// testConfig is the default configuration on loopback ports chosen by the
// kernel, changed by args (flags, as a user would give them).
func testConfig(t *testing.T, args ...string) Config {
	t.Helper()
	cfg, err := parseConfig(append([]string{"-addr", "127.0.0.1:0", "-message-log", "none"}, args...), testEnv(nil))
	if err != nil {
		t.Fatalf("parseConfig(%q): %v", args, err)
	}
	return cfg
}

// recordingLogger is a message.Logger that keeps what it is told, and can
// be made to fail. (The -message-log-timeout is the MySQL log's own: see
// TestMySQLOutageSend.)
type recordingLogger struct {
	mu      sync.Mutex
	logs    []message.Log
	calls   int                       // Log calls that logged
	updates map[string]message.Status // id/uid → last status
	err     error                     // returned by Log and Ready when set
}

func newRecordingLogger() *recordingLogger {
	return &recordingLogger{updates: map[string]message.Status{}}
}

func (l *recordingLogger) Log(_ context.Context, ms ...message.Log) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	l.logs = append(l.logs, ms...)
	l.calls++
	return nil
}

// logCalls is how many Log calls logged something.
func (l *recordingLogger) logCalls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls
}

func (l *recordingLogger) Update(id, uid string, s message.Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.updates[id+"/"+uid] != message.StatusDelivered {
		l.updates[id+"/"+uid] = s
	}
}

func (l *recordingLogger) Ready(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *recordingLogger) Close(context.Context) error { return nil }

func (l *recordingLogger) setErr(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
}

func (l *recordingLogger) logged() []message.Log {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]message.Log(nil), l.logs...)
}

func (l *recordingLogger) status(id, uid string) (message.Status, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.updates[id+"/"+uid]
	return s, ok
}

// testServer is a Server on real loopback listeners.
type testServer struct {
	*Server
	t      *testing.T
	msgLog *recordingLogger
	logBuf *syncBuffer
	cancel context.CancelFunc
	done   chan error
	client *http.Client
}

// startServer starts a server with cfg and a recordingLogger as its
// message log, and stops it when the test ends.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	msgLog := newRecordingLogger()
	ts := startServerLog(t, cfg, msgLog)
	ts.msgLog = msgLog
	return ts
}

// startServerLog starts a server with cfg and msgLog (which the server
// closes at shutdown), and stops it when the test ends. ts.msgLog is nil.
func startServerLog(t *testing.T, cfg Config, msgLog message.Logger) *testServer {
	t.Helper()
	return startServerHooked(t, cfg, msgLog, func(*Server) {})
}

// startServerWith is startServer with a hook that may change the server
// before it listens.
func startServerWith(t *testing.T, cfg Config, hook func(*Server)) *testServer {
	t.Helper()
	msgLog := newRecordingLogger()
	ts := startServerHooked(t, cfg, msgLog, hook)
	ts.msgLog = msgLog
	return ts
}

func startServerHooked(t *testing.T, cfg Config, msgLog message.Logger, hook func(*Server)) *testServer {
	t.Helper()
	logBuf := &syncBuffer{}
	srv, err := newServer(cfg, slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})), msgLog)
	if err != nil {
		t.Fatal(err)
	}
	hook(srv)
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{
		Server: srv, t: t, logBuf: logBuf, cancel: cancel, done: make(chan error, 1),
		client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second},
	}
	go func() { ts.done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
		ts.client.CloseIdleConnections()
	})
	return ts
}

// stop shuts the server down and returns Serve's result. It may be called
// more than once.
func (ts *testServer) stop() error {
	ts.cancel()
	err, ok := <-ts.done
	if ok {
		close(ts.done)
	}
	return err
}

// opsURL is the base URL of /send, /metrics, /healthz, /readyz.
func (ts *testServer) opsURL() string {
	if a := ts.InternalAddr(); a != "" {
		return "http://" + a
	}
	return "http://" + ts.Addr()
}

func (ts *testServer) token(uid string, ttl time.Duration) string {
	ts.t.Helper()
	tok, err := IssueToken(testSecret, uid, ttl, time.Now())
	if err != nil {
		ts.t.Fatal(err)
	}
	return tok
}

// dial connects uid with a fresh token and waits until the hub has it.
func (ts *testServer) dial(uid string) *websocket.Conn {
	ts.t.Helper()
	before := len(ts.hub.clients(uid))
	conn := ts.dialRaw("/ws?token="+url.QueryEscape(ts.token(uid, time.Hour)), nil)
	waitFor(ts.t, "uid "+uid+" registered", func() bool { return len(ts.hub.clients(uid)) > before })
	return conn
}

// dialRaw connects to path on the public listener with header and fails
// the test unless the upgrade succeeds.
func (ts *testServer) dialRaw(path string, header http.Header) *websocket.Conn {
	ts.t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr()+path, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		ts.t.Fatalf("dial %s: %v (status %d)", path, err, status)
	}
	ts.t.Cleanup(func() { conn.Close() })
	return conn
}

// send posts body to /send with the API key and returns status and body.
func (ts *testServer) send(contentType, body string) (int, string) {
	ts.t.Helper()
	return ts.do(http.MethodPost, "/send", contentType, body, "Bearer "+testAPIKey)
}

func (ts *testServer) sendJSON(v any) (int, string) {
	ts.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		ts.t.Fatal(err)
	}
	return ts.send("application/json", string(b))
}

// sendForm posts uid and message as a form and wants 200.
func (ts *testServer) sendOK(uid, msg string) string {
	ts.t.Helper()
	code, body := ts.send("application/x-www-form-urlencoded", url.Values{"uid": {uid}, "message": {msg}}.Encode())
	if code != http.StatusOK {
		ts.t.Fatalf("send(%q, %q) = %d %q, want 200", uid, msg, code, body)
	}
	var reply struct{ ID string }
	if err := json.Unmarshal([]byte(body), &reply); err != nil || reply.ID == "" {
		ts.t.Fatalf("send reply %q: no id (%v)", body, err)
	}
	return reply.ID
}

func (ts *testServer) do(method, path, contentType, body, auth string) (int, string) {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.opsURL()+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (ts *testServer) get(path string) (int, string) {
	ts.t.Helper()
	return ts.do(http.MethodGet, path, "", "", "")
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// hammer runs f in n goroutines, each calling it over and over (w is the
// goroutine, i counts its calls), until f returns false or stop is
// called; stop waits for them.
func hammer(n int, f func(w, i int) bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				if !f(w, i) {
					return
				}
			}
		})
	}
	return func() {
		close(done)
		wg.Wait()
	}
}

// metric scrapes /metrics and returns the value of the sample of name
// (counter, gauge, or a histogram's count) whose labels include every
// "key=value" of labels; it fails the test when there is none.
func (ts *testServer) metric(name string, labels ...string) float64 {
	ts.t.Helper()
	code, body := ts.get("/metrics")
	if code != http.StatusOK {
		ts.t.Fatalf("/metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		ts.t.Fatalf("parse /metrics: %v", err)
	}
	f, ok := families[name]
	if !ok {
		ts.t.Fatalf("/metrics lacks %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	ts.t.Fatalf("/metrics has no %s%v", name, labels)
	return 0
}
