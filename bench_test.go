package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/message"
)

// The hot paths, for go test -bench (make bench runs them):
//
//	go test -run '^$' -bench . -benchmem .

func BenchmarkParseSendRequest(b *testing.B) {
	uids := make([]string, 100)
	for i := range uids {
		uids[i] = fmt.Sprintf("%q", fmt.Sprintf("user-%d", i))
	}
	bodies := []struct{ name, ct, body string }{
		{"form", "application/x-www-form-urlencoded", "uid=user-42&message=" + url.QueryEscape(`{"type":"notice","text":"a typical payload of about one hundred bytes, give or take a few"}`)},
		{"json", "application/json", `{"uid":"user-42","message":"{\"type\":\"notice\",\"text\":\"a typical payload of about one hundred bytes, give or take a few\"}"}`},
		{"json-multicast-100", "application/json", `{"uids":[` + strings.Join(uids, ",") + `],"message":"hello everyone"}`},
	}
	lim := sendLimits{MaxMessageSize: 65536, MaxMulticast: 10000}
	for _, bb := range bodies {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "/send", strings.NewReader(bb.body))
				r.Header.Set("Content-Type", bb.ct)
				if _, herr := parseSendRequest(r, lim); herr != nil {
					b.Fatal(herr)
				}
			}
		})
	}
}

// BenchmarkParseSendJSON and BenchmarkParseSendForm compare the /send
// parser before the fast paths (old: refParseSendRequest) with today's
// (new). The request is built once and its body rewound, so that only the
// parsing is measured:
//
//	go test -run '^$' -bench 'ParseSend(JSON|Form)$' -benchmem .
func BenchmarkParseSendJSON(b *testing.B) {
	uids := make([]string, 100)
	for i := range uids {
		uids[i] = fmt.Sprintf("%q", fmt.Sprintf("user-%d", i))
	}
	benchParseSend(b, "application/json", []struct{ name, query, body string }{
		{"unicast", "", `{"uid":"user-42","message":"a typical payload of about one hundred bytes, give or take a few, in plain text"}`},
		{"multicast-100", "", `{"uids":[` + strings.Join(uids, ",") + `],"message":"hello everyone"}`},
		// A message that is JSON itself, as real ones often are.
		{"escaped", "", `{"uid":"user-42","message":"{\"type\":\"notice\",\"text\":\"a typical payload of about one hundred bytes\"}"}`},
		{"escaped-unicode", "", `{"uid":"user-42","message":"{\"type\":\"chat\",\"text\":\"caf\u00e9 \u4e2d\u6587\nline two \ud83d\ude00\"}"}`},
	})
}

func BenchmarkParseSendForm(b *testing.B) {
	msg := url.QueryEscape(`{"type":"notice","text":"a typical payload of about one hundred bytes, give or take a few"}`)
	benchParseSend(b, "application/x-www-form-urlencoded", []struct{ name, query, body string }{
		{"unicast", "", "uid=user-42&message=" + msg},
		{"uid-in-query", "uid=user-42", "message=" + msg},
	})
}

func benchParseSend(b *testing.B, contentType string, cases []struct{ name, query, body string }) {
	lim := sendLimits{MaxMessageSize: 65536, MaxMulticast: 10000}
	parsers := []struct {
		name  string
		parse func(*http.Request, sendLimits) (sendRequest, *httpError)
	}{{"old", refParseSendRequest}, {"new", parseSendRequest}}
	for _, c := range cases {
		for _, p := range parsers {
			b.Run(c.name+"/"+p.name, func(b *testing.B) {
				r := httptest.NewRequest(http.MethodPost, "/send?"+c.query, nil)
				r.Header.Set("Content-Type", contentType)
				body := strings.NewReader(c.body)
				rc := io.NopCloser(body)
				b.ReportAllocs()
				for b.Loop() {
					body.Reset(c.body)
					r.Body, r.ContentLength, r.Form, r.PostForm = rc, int64(len(c.body)), nil, nil
					if _, herr := p.parse(r, lim); herr != nil {
						b.Fatal(herr)
					}
				}
			})
		}
	}
}

func BenchmarkStdoutLogger(b *testing.B) {
	l := message.NewStdoutLogger(io.Discard, 0)
	defer l.Close(context.Background())
	m := message.Log{ID: "06a1r3k6c7l2q0e9f1s8", UIDs: []string{"user-42"}, Message: `{"type":"notice","text":"hello"}`, Time: time.Now()}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Log(context.Background(), m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

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
				m := newMessage("06a1r3k6c7l2q0e9f1s8", data, time.Now())
				if _, err := srv.broker.Publish(context.Background(), m, uids); err != nil {
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
