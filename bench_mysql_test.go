package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/message"
)

// benchSenders is how many /send requests are in flight at once: the
// backend apps of a busy deployment.
const benchSenders = 64

// BenchmarkSendMySQL measures /send throughput and p99 latency with the
// mysql message log against -message-log=none, in the same run on the
// same machine: 64 concurrent senders, each pushing to its own connected
// client that reads everything. Group commit should keep mysql at half the
// throughput of none or better.
//
//	go test -run '^$' -bench BenchmarkSendMySQL -benchtime 20000x .
func BenchmarkSendMySQL(b *testing.B) {
	b.Run("none", func(b *testing.B) {
		cfg := benchConfig(b, "-message-log", "none")
		benchSend(b, cfg, message.NoneLogger{})
	})
	b.Run("mysql", func(b *testing.B) {
		d := newMySQLTestDB(b)
		cfg := mysqlConfig(b, d.DSN)
		benchSend(b, cfg, openMySQLLog(b, cfg))
	})
}

func benchConfig(b *testing.B, args ...string) Config {
	b.Helper()
	cfg, err := parseConfig(append([]string{"-addr", "127.0.0.1:0"}, args...), testEnv(nil))
	if err != nil {
		b.Fatal(err)
	}
	return cfg
}

// benchSend runs b.N /send requests through a real server whose message
// log is msgLog, and reports msgs/s and the p99 latency of /send.
func benchSend(b *testing.B, cfg Config, msgLog message.Logger) {
	srv := startBenchServer(b, cfg, msgLog)
	base := "http://" + srv.Addr()

	// One client per sender, reading every message.
	var received atomic.Int64
	var readers sync.WaitGroup
	uids := make([]string, benchSenders)
	conns := make([]*websocket.Conn, benchSenders)
	for i := range uids {
		uids[i] = fmt.Sprintf("bench%d", i)
		tok, err := IssueToken(testSecret, uids[i], time.Hour, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		conn, _, err := websocket.DefaultDialer.Dial("ws://"+srv.Addr()+"/ws?token="+url.QueryEscape(tok), nil)
		if err != nil {
			b.Fatalf("dial: %v", err)
		}
		conns[i] = conn
		readers.Go(func() {
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					return // closed at the end
				}
				received.Add(1)
			}
		})
	}
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		readers.Wait()
	})
	waitForB(b, "clients registered", func() bool { return srv.hub.Connections() == benchSenders })

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchSenders}, Timeout: 30 * time.Second}
	b.Cleanup(client.CloseIdleConnections)
	body := func(uid string) string {
		return url.Values{"uid": {uid}, "message": {`{"type":"notice","text":"benchmark message with a typical payload of about one hundred bytes"}`}}.Encode()
	}

	var next atomic.Int64
	var failed atomic.Int64
	latencies := make([][]time.Duration, benchSenders)
	b.ResetTimer()
	start := time.Now()
	var senders sync.WaitGroup
	for i := range benchSenders {
		senders.Go(func() {
			lat := make([]time.Duration, 0, b.N/benchSenders+1)
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				req, _ := http.NewRequest(http.MethodPost, base+"/send", strings.NewReader(body(uids[i])))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("Authorization", "Bearer "+testAPIKey)
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				// Drained so that the connection is reused; its content is the id.
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			latencies[i] = lat
		})
	}
	senders.Wait()
	ok := int64(b.N) - failed.Load()
	waitForB(b, "every message read", func() bool { return received.Load() >= ok })
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d sends failed", n, b.N)
	}

	all := slices.Concat(latencies...)
	slices.Sort(all)
	p99 := all[min(len(all)-1, len(all)*99/100)]
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}

// startBenchServer is startServerLog for a benchmark: a server on
// loopback, stopped (and msgLog closed) when the benchmark run ends.
func startBenchServer(b *testing.B, cfg Config, msgLog message.Logger) *Server {
	b.Helper()
	srv, err := newServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), msgLog)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Serve() = %v", err)
		}
	})
	return srv
}

// waitForB polls cond until it holds, failing the benchmark after 30 s.
func waitForB(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
