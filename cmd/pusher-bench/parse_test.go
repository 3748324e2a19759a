package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	tests := []struct {
		name          string
		sender, seq   int32
		sentAt        int64
		size, wantLen int
	}{
		{"padded", 3, 17, 1764100000123456789, 64, 64},
		{"header longer than size", 2147483647, 2147483647, 9223372036854775807, 10, maxHeader},
		{"zeros", 0, 0, 0, 1, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := appendPayload(nil, tt.sender, tt.seq, tt.sentAt, tt.size)
			if len(b) != tt.wantLen {
				t.Errorf("appendPayload len = %d, want %d", len(b), tt.wantLen)
			}
			s, q, at, hlen, ok := parsePayload(b)
			if !ok || s != tt.sender || q != tt.seq || at != tt.sentAt || hlen > len(b) {
				t.Errorf("parsePayload(%q) = %d, %d, %d, %d, %v; want %d, %d, %d", b, s, q, at, hlen, ok, tt.sender, tt.seq, tt.sentAt)
			}
		})
	}
}

func TestParsePayloadRefuses(t *testing.T) {
	for _, in := range []string{
		"", "s", "x1:2:3:", "s1:2:3", "s:2:3:", "s1:2:-3:", "s2147483648:1:1:", "s1:1:9223372036854775808:",
		"s1:1:99999999999999999999:", "authenticate error: token is missing",
	} {
		if _, _, _, _, ok := parsePayload([]byte(in)); ok {
			t.Errorf("parsePayload(%q) ok, want refused", in)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP connections Open registered WebSocket connections.
# TYPE connections gauge
connections 12
pending 0
go_goroutines 31
pusher_messages_failed_total{reason="closed"} 2
pusher_messages_failed_total{reason="slow_consumer"} 3
process_resident_memory_bytes 1.2345e+07
pusher_send_duration_seconds_bucket{le="+Inf"} 7
`
	m, err := parseMetrics([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"connections": 12, "pending": 0, "go_goroutines": 31, "pusher_messages_failed_total": 5,
		`pusher_messages_failed_total{reason="closed"}`: 2, "process_resident_memory_bytes": 12345000,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("parseMetrics()[%q] = %v, %v; want %v", k, got, ok, v)
		}
	}
	if _, err := parseMetrics([]byte("connections twelve\n")); err == nil {
		t.Error("parseMetrics(bad value) = nil error, want one")
	}
}

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := "1234 (go pusher (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 200\n"
	got, err := parseStat([]byte(stat))
	if err != nil || got != 3.0 {
		t.Errorf("parseStat = %v, %v; want 3 (300 ticks)", got, err)
	}
	if _, err := parseStat([]byte("1234 (x) S 1")); err == nil {
		t.Error("parseStat(short) = nil error, want one")
	}
	if cpu, err := procCPU(1); err != nil || cpu < 0 {
		t.Errorf("procCPU(1) = %v, %v", cpu, err)
	}
	if rss, err := procRSS(1); err != nil || rss <= 0 {
		t.Errorf("procRSS(1) = %v, %v; want positive", rss, err)
	}
}

func TestParseFlags(t *testing.T) {
	env := map[string]string{"JWT_SECRET": "s", "PUSHER_API_KEY": "k"}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		wantErr string // "" when the flags are good
	}{
		{"defaults", nil, getenv, ""},
		{"full", []string{"-scenario", "churn", "-users", "5", "-duration", "1s", "-internal-url", "http://127.0.0.1:9"}, getenv, ""},
		{"no secret", nil, func(string) string { return "" }, "JWT_SECRET is required"},
		{"idle needs no API key", []string{"-scenario", "idle"}, func(k string) string { return map[string]string{"JWT_SECRET": "s"}[k] }, ""},
		{"bad scenario", []string{"-scenario", "storm"}, getenv, `invalid -scenario "storm"`},
		{"bad url", []string{"-url", "ws://x"}, getenv, "invalid -url"},
		{"zero users", []string{"-users", "0"}, getenv, "invalid -users 0"},
		{"multicast over users", []string{"-users", "3", "-multicast", "4"}, getenv, "invalid -multicast 4"},
		{"bad prefix", []string{"-uid-prefix", `a"b`}, getenv, "invalid -uid-prefix"},
		{"every problem at once", []string{"-users", "0", "-senders", "0"}, getenv, "-senders 0"},
		{"argument", []string{"extra"}, getenv, `unexpected argument "extra"`},
		{"reconnect", []string{"-scenario", "reconnect", "-drop-interval", "2s", "-redial-min", "0s", "-redial-max", "0s"}, getenv, ""},
		{"reconnect without drops", []string{"-scenario", "reconnect", "-drop-interval", "0s"}, getenv, "invalid -drop-interval"},
		{"redial range upside down", []string{"-scenario", "reconnect", "-redial-min", "1s", "-redial-max", "10ms"}, getenv, "-redial-max is at least -redial-min"},
		{"internal urls per node", []string{"-url", "http://a:1,http://b:1", "-internal-url", "http://a:2"}, getenv, "one per node"},
		{"bad pid", []string{"-server-pid", "12,x"}, getenv, `invalid -server-pid "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseFlags(tt.args, tt.env, new(bytes.Buffer))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("parseFlags(%q) = %v, want no error", tt.args, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("parseFlags(%q) = %v, want an error with %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

// TestNodeLists: -url and -server-pid take several values, repeated or
// comma-separated; the first -url replaces the default.
func TestNodeLists(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"JWT_SECRET": "s", "PUSHER_API_KEY": "k"}[k] }
	e, _, err := parseFlags([]string{"-url", "http://a:1,http://b:1", "-url", " http://c:1 ", "-server-pid", "10", "-server-pid", "11,12"}, getenv, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if got := splitList(e.URL); strings.Join(got, " ") != "http://a:1 http://b:1 http://c:1" {
		t.Errorf("nodes = %q, want a, b, c", got)
	}
	if len(e.ServerPIDs) != 3 || e.ServerPIDs[0] != 10 || e.ServerPIDs[2] != 12 {
		t.Errorf("pids = %v, want [10 11 12]", e.ServerPIDs)
	}
	e, _, err = parseFlags(nil, getenv, new(bytes.Buffer))
	if err != nil || e.URL != "http://127.0.0.1:8181" || e.ServerPIDs != nil {
		t.Errorf("defaults: url %q, pids %v, %v", e.URL, e.ServerPIDs, err)
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if _, _, err := parseFlags([]string{"-h"}, func(string) string { return "" }, &out); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("parseFlags(-h) = %v, want flag.ErrHelp", err)
	}
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Errorf("run(-h) = %v, want nil", err)
	}
	if !strings.Contains(out.String(), "-scenario") {
		t.Errorf("usage does not list -scenario:\n%s", out.String())
	}
}
