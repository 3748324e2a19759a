package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// goroutine of the engine has an owner that stops it and waits for it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testEngine is a tiny run against fs, changed by opts.
func testEngine(fs *fakeServer, scenario string, opts ...func(*Engine)) *Engine {
	return testEngineAt(fs.URL, scenario, opts...)
}

// testEngineAt is a tiny run against the server at url, changed by opts.
func testEngineAt(url, scenario string, opts ...func(*Engine)) *Engine {
	e := &Engine{
		URL: url, JWTSecret: testSecret, APIKey: testAPIKey, ServerPIDs: []int{os.Getpid()},
		Scenario: scenario, Users: 10, ConnsPerUser: 1, Senders: 3, Messages: 300, Rounds: 20, Size: 64,
		Duration: time.Second, Settle: 50 * time.Millisecond, Drain: 2 * time.Second,
		ConnectTimeout: 10 * time.Second, SettleTimeout: 5 * time.Second, RequestTimeout: 5 * time.Second, MaxTime: time.Minute,
		DialConcurrency: 4, SourceAddrs: 4, ChurnFraction: 0.5, ChurnLifetime: 200 * time.Millisecond, ChurnAbrupt: 0.3,
		RegisterGrace: 50 * time.Millisecond, GoroutineSlack: 3, UIDPrefix: "t-", Out: new(bytes.Buffer),
		BatchItems: 7, RetryTimeout: time.Second, RetryAttempts: 10,
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

func measure(t *testing.T, e *Engine) *Report {
	t.Helper()
	rep, err := e.Measure(context.Background())
	if err != nil {
		t.Fatalf("Measure(%s): %v", e.Scenario, err)
	}
	if err := rep.print(e.Out, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", e.Out)
	return rep
}

// wantClean checks that nothing was lost, duplicated or reordered.
func wantClean(t *testing.T, rep *Report) {
	t.Helper()
	if rep.Lost != 0 || rep.Duplicates != 0 || rep.OutOfOrder != 0 || rep.Unexpected != 0 || rep.Malformed != 0 || rep.Result != "PASS" {
		t.Errorf("lost %d, duplicates %d, out of order %d, unexpected %d, malformed %d, result %s %v; want all 0 and PASS",
			rep.Lost, rep.Duplicates, rep.OutOfOrder, rep.Unexpected, rep.Malformed, rep.Result, rep.Problems)
	}
}

func wantLatency(t *testing.T, rep *Report) {
	t.Helper()
	l := rep.Latency
	if l == nil {
		t.Fatal("no latency figures")
	}
	if l.P50 < 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max {
		t.Errorf("latency p50 %v p90 %v p99 %v max %v: want 0 <= p50 <= p90 <= p99 <= max", l.P50, l.P90, l.P99, l.Max)
	}
}

func TestIdle(t *testing.T) {
	fs := newFakeServer(t, faults{})
	rep := measure(t, testEngine(fs, scenarioIdle, func(e *Engine) { e.Users, e.ConnsPerUser = 8, 2 }))
	wantClean(t, rep)
	if rep.Connected != 16 {
		t.Errorf("connected = %d, want 16", rep.Connected)
	}
	if rep.UpgradesPerSec <= 0 || rep.ConfirmedPerSec <= 0 {
		t.Errorf("connect rates %v, %v: want positive", rep.UpgradesPerSec, rep.ConfirmedPerSec)
	}
	// The fake server and the tool share this process: each connection
	// costs a handler, a writer and a receiver goroutine.
	if rep.GoroutinesPerConn < 2 {
		t.Errorf("goroutines per connection = %v, want at least 2", rep.GoroutinesPerConn)
	}
	if rep.After == nil || rep.After.Connections != 16 {
		t.Errorf("server state while held = %+v, want 16 connections", rep.After)
	}
}

func TestSend(t *testing.T) {
	for _, form := range []bool{false, true} {
		t.Run(map[bool]string{false: "json", true: "form"}[form], func(t *testing.T) {
			fs := newFakeServer(t, faults{})
			rep := measure(t, testEngine(fs, scenarioSend, func(e *Engine) { e.Form = form }))
			wantClean(t, rep)
			wantLatency(t, rep)
			if rep.Requests != 300 || rep.Accepted != 300 || rep.Delivered != 300 || rep.Expected != 300 {
				t.Errorf("requests %d, accepted %d, delivered %d, expected %d; want 300 each", rep.Requests, rep.Accepted, rep.Delivered, rep.Expected)
			}
			if rep.AcceptedPerSec <= 0 || rep.DeliveredPerSec <= 0 {
				t.Errorf("rates %v, %v: want positive", rep.AcceptedPerSec, rep.DeliveredPerSec)
			}
			if rep.ServerFailed != 0 {
				t.Errorf("server failed delta = %v, want 0 (the fake's counter does not move)", rep.ServerFailed)
			}
		})
	}
}

func TestSendSeveralConnsPerUserAndRate(t *testing.T) {
	fs := newFakeServer(t, faults{})
	start := time.Now()
	rep := measure(t, testEngine(fs, scenarioSend, func(e *Engine) { e.ConnsPerUser, e.Messages, e.Rate = 3, 100, 500 }))
	wantClean(t, rep)
	if rep.Delivered != 300 || rep.Expected != 300 {
		t.Errorf("delivered %d, expected %d; want 300 (100 messages × 3 connections)", rep.Delivered, rep.Expected)
	}
	// 100 requests at 500/s take at least 0.198 s.
	if d := time.Since(start); d < 190*time.Millisecond {
		t.Errorf("took %s, want at least 0.19 s at -rate 500", d)
	}
}

func TestMulticast(t *testing.T) {
	fs := newFakeServer(t, faults{})
	rep := measure(t, testEngine(fs, scenarioMulticast, func(e *Engine) { e.MulticastSize = 4 }))
	wantClean(t, rep)
	wantLatency(t, rep)
	if rep.Accepted != 20 || rep.Delivered != 80 || rep.Expected != 80 {
		t.Errorf("accepted %d, delivered %d, expected %d; want 20, 80, 80", rep.Accepted, rep.Delivered, rep.Expected)
	}
}

func TestChurn(t *testing.T) {
	fs := newFakeServer(t, faults{})
	rep := measure(t, testEngine(fs, scenarioChurn, func(e *Engine) { e.Users, e.Messages, e.Rate = 20, 100000, 1000 }))
	wantClean(t, rep)
	if rep.Redials == 0 {
		t.Error("redials = 0, want connections to close and redial")
	}
	if rep.Expected == 0 || rep.Accepted == 0 {
		t.Errorf("expected %d, accepted %d: want some", rep.Expected, rep.Accepted)
	}
	if rep.Before == nil || rep.After == nil || rep.After.Connections != rep.Before.Connections {
		t.Errorf("before %+v, after %+v: want the same connections", rep.Before, rep.After)
	}
}

// TestFaultsShow: a server that drops, duplicates, reorders or refuses
// messages gets a report that says so, and Run fails.
func TestFaultsShow(t *testing.T) {
	tests := []struct {
		name     string
		f        faults
		scenario string
		check    func(*Report) bool
	}{
		{"drop", faults{dropEvery: 50}, scenarioSend, func(r *Report) bool { return r.Lost == 6 && r.Delivered == 294 }},
		{"duplicate", faults{dupEvery: 50}, scenarioSend, func(r *Report) bool { return r.Duplicates == 6 && r.Lost == 0 }},
		// One sender: order is per sender, a swap across senders is fine.
		// The last message held back may stay there, lost.
		{"reorder", faults{swapEvery: 50}, scenarioSend, func(r *Report) bool { return r.OutOfOrder >= 4 }},
		{"404 while connected", faults{notFoundEvery: 30}, scenarioSend, func(r *Report) bool { return r.NotFoundWhileOpen == 10 && r.Status["404"] == 10 }},
		{"multicast drop", faults{dropEvery: 10}, scenarioMulticast, func(r *Report) bool { return r.Lost == 20 }},
		{"server stops answering", faults{hangUpAfter: 50}, scenarioSend, func(r *Report) bool {
			return r.Accepted == 50 && r.Requests < 300 && strings.Contains(strings.Join(r.Problems, ";"), "got no answer")
		}},
		{"handshakes refused", faults{refuseEvery: 5}, scenarioIdle, func(r *Report) bool {
			return r.Connected == 8 && r.DialErrors["http 503"] == 2
		}},
		{"leak", faults{leakConns: true}, scenarioChurn, func(r *Report) bool { return strings.Contains(strings.Join(r.Problems, ";"), "baseline") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t, tt.f)
			e := testEngine(fs, tt.scenario, func(e *Engine) { e.Drain, e.SettleTimeout, e.Rate = time.Second, 500*time.Millisecond, 2000 })
			if tt.name == "reorder" {
				e.Senders = 1
			}
			e.JSON = true
			wantFaultReported(t, e, tt.check)
		})
	}
}

// wantFaultReported runs e (with JSON output) against a faulty server and
// wants it to fail its checks with a report that check accepts.
func wantFaultReported(t *testing.T, e *Engine, check func(*Report) bool) {
	t.Helper()
	err := e.Run(context.Background())
	t.Logf("report:\n%s", e.Out)
	if !errors.Is(err, errCheckFailed) {
		t.Errorf("Run = %v, want errCheckFailed", err)
	}
	var rep Report
	if err := json.Unmarshal(e.Out.(*bytes.Buffer).Bytes(), &rep); err != nil {
		t.Fatalf("decode the -json report: %v", err)
	}
	if !check(&rep) || rep.Result != "FAIL" {
		t.Errorf("report %+v does not show the fault", rep)
	}
}

// TestRunAndTable runs the command as a user would, with -json, and turns
// the output into a table.
func TestRunAndTable(t *testing.T) {
	fs := newFakeServer(t, faults{})
	env := map[string]string{"JWT_SECRET": testSecret, "PUSHER_API_KEY": testAPIKey}
	var out, errOut bytes.Buffer
	args := []string{"-url", fs.URL, "-scenario", "send", "-users", "5", "-senders", "2", "-messages", "50", "-json", "-label", "fake"}
	if err := run(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut); err != nil {
		t.Fatalf("run(%q) = %v; stderr %s", args, err, errOut.String())
	}
	file := filepath.Join(t.TempDir(), "send.json")
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := run(context.Background(), []string{"table", file, file}, nil, &table, &errOut); err != nil {
		t.Fatalf("table: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "send fake") || !strings.Contains(lines[1], "PASS") {
		t.Errorf("table =\n%s\nwant a header and two PASS rows for send fake", table.String())
	}
}

// TestWrongSecret: connections the server refuses after the handshake end
// the run at once, with a report that says why.
func TestWrongSecret(t *testing.T) {
	fs := newFakeServer(t, faults{})
	e := testEngine(fs, scenarioSend, func(e *Engine) { e.JWTSecret = "not-the-server-secret" })
	start := time.Now()
	rep, err := e.Measure(context.Background())
	if err == nil || !strings.Contains(err.Error(), "closed every connection") {
		t.Fatalf("Measure = %v, want a connect error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to notice, want it at once", d)
	}
	if rep == nil || !strings.HasPrefix(rep.MalformedSample, "authenticate error") || rep.ServerCloses["1008"] != 10 || rep.Result != "FAIL" {
		t.Errorf("report %+v: want the authenticate error, 10 closes with 1008, FAIL", rep)
	}
}
