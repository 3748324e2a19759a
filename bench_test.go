package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/cluster"
	"go-pusher/internal/stream"
	"go-pusher/message"
)

// The hot paths, for go test -bench (make bench runs them):
//
//	go test -run '^$' -bench . -benchmem .

func BenchmarkParseToken(b *testing.B) {
	a := NewJWTAuthenticator(testSecret, time.Now)
	tok, err := IssueToken(testSecret, "user-42", time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.ParseToken(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDeliver queues one message on n connected clients at a time
// (n uids, as a multicast does) and waits until every client read it: the
// cost of a delivery, write system call included.
func BenchmarkDeliver(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("conns-%d", n), func(b *testing.B) {
			srv := startBenchServer(b, benchConfig(b, "-message-log", "none"), message.NoneLogger{})
			var received atomic.Int64
			var readers sync.WaitGroup
			b.Cleanup(readers.Wait) // cleanups run last first: after the conns close
			uids := make([]string, n)
			for i := range uids {
				uids[i] = fmt.Sprintf("d%d", i)
				tok, err := IssueToken(testSecret, uids[i], time.Hour, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				conn, _, err := websocket.DefaultDialer.Dial("ws://"+srv.Addr()+"/ws?token="+tok, nil)
				if err != nil {
					b.Fatal(err)
				}
				readers.Go(func() {
					for {
						if _, _, err := conn.ReadMessage(); err != nil {
							return
						}
						received.Add(1)
					}
				})
				b.Cleanup(func() { conn.Close() })
			}
			waitForB(b, "clients registered", func() bool { return srv.hub.Connections() == n })
			data := []byte(`{"type":"notice","text":"hello everyone"}`)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				m := stream.NewMessage("06a1r3k6c7l2q0e9f1s8", data, time.Now())
				if err := srv.broker.PublishAll(context.Background(), []*cluster.Publication{{Message: m, UIDs: uids}}); err != nil {
					b.Fatal(err)
				}
				want := int64((i + 1) * n)
				for received.Load() < want {
					time.Sleep(10 * time.Microsecond)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}
