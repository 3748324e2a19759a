package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// keepAliveServer answers /send with the request's body length, counts
// the TCP connections it accepted, and closes the connection after the
// answer when the body is "close".
func keepAliveServer(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func echoLength(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read body: %v", err)
		}
		if r.Method != http.MethodPost || r.URL.Path != "/send" || r.Header.Get("Authorization") != "Bearer k" ||
			r.Header.Get("Content-Type") != "application/json" || r.ContentLength != int64(len(body)) {
			t.Errorf("got %s %s, Authorization %q, Content-Type %q, Content-Length %d for %d bytes",
				r.Method, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("Content-Type"), r.ContentLength, len(body))
		}
		if string(body) == "close" {
			w.Header().Set("Connection", "close")
		}
		w.WriteHeader(200 + len(body))
	}
}

func TestKeepAliveConnReusesOneConnection(t *testing.T) {
	srv, conns := keepAliveServer(t, echoLength(t))
	k, err := newKeepAliveConn(srv.URL+"/send", bearer("k"), 5*time.Second)
	if err != nil || k == nil {
		t.Fatalf("newKeepAliveConn = %v, %v", k, err)
	}
	defer k.close()
	for i := range 50 {
		body := []byte(`{"n":` + strconv.Itoa(i) + `}`)
		code, err := k.post(context.Background(), "application/json", body)
		if err != nil || code != 200+len(body) {
			t.Fatalf("post %d = %d, %v; want %d", i, code, err, 200+len(body))
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("50 posts used %d connections; want 1", n)
	}
}

func TestKeepAliveConnRedialsAfterConnectionClose(t *testing.T) {
	srv, conns := keepAliveServer(t, echoLength(t))
	k, _ := newKeepAliveConn(srv.URL+"/send", bearer("k"), 5*time.Second)
	defer k.close()
	for i, body := range []string{"close", "x", "close", "yy"} {
		code, err := k.post(context.Background(), "application/json", []byte(body))
		if err != nil || code != 200+len(body) {
			t.Fatalf("post %d (%q) = %d, %v; want %d", i, body, code, err, 200+len(body))
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("connections = %d; want 3 (each close answered, then a new one)", n)
	}
}

func TestKeepAliveConnStopsWhenContextEnds(t *testing.T) {
	release := make(chan struct{})
	srv, _ := keepAliveServer(t, func(http.ResponseWriter, *http.Request) {
		<-release
	})
	defer close(release) // before srv.Close, which waits for the handler
	k, _ := newKeepAliveConn(srv.URL+"/send", bearer("k"), time.Minute)
	defer k.close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	code, err := k.post(ctx, "application/json", []byte("{}"))
	if !errors.Is(err, context.Canceled) || code != 0 {
		t.Errorf("post = %d, %v; want 0, context.Canceled", code, err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("post returned after %s; want soon after the cancel", took)
	}
	if k.conn != nil {
		t.Error("the connection of a cancelled request was kept for the next one")
	}
}

func TestKeepAliveConnIsOnlyForHTTP(t *testing.T) {
	k, err := newKeepAliveConn("https://example.com/send", bearer("k"), time.Second)
	if k != nil || err != nil {
		t.Errorf("https URL gave %v, %v; want nil, nil (net/http serves https)", k, err)
	}
	k, err = newKeepAliveConn("http://[::1/send", bearer("k"), time.Second)
	if k != nil || err == nil {
		t.Errorf("malformed URL gave %v, %v; want an error", k, err)
	}
}

// An informational answer (103 Early Hints) comes before the real one:
// the real one is the answer, and nothing is left for the next request.
func TestKeepAliveConnSkipsInformationalAnswers(t *testing.T) {
	srv, conns := keepAliveServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // only to have read it: the client checks the answers
		w.Header().Set("Link", "</x>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusAccepted)
	})
	k, _ := newKeepAliveConn(srv.URL+"/send", bearer("k"), 5*time.Second)
	defer k.close()
	for i := range 3 {
		if code, err := k.post(context.Background(), "application/json", []byte("{}")); err != nil || code != http.StatusAccepted {
			t.Fatalf("post %d = %d, %v; want 202", i, code, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("connections = %d; want 1", n)
	}
}

// A connection that rested longer than maxIdle is not trusted: the
// server may be closing it.
func TestKeepAliveConnRedialsAfterRest(t *testing.T) {
	srv, conns := keepAliveServer(t, echoLength(t))
	k, _ := newKeepAliveConn(srv.URL+"/send", bearer("k"), 5*time.Second)
	defer k.close()
	for i := range 3 {
		if i == 2 {
			k.idle = k.idle.Add(-maxIdle - time.Second)
		}
		if code, err := k.post(context.Background(), "application/json", []byte("x")); err != nil || code != 201 {
			t.Fatalf("post %d = %d, %v; want 201", i, code, err)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("connections = %d; want 2 (a new one after the rest)", n)
	}
}

// keyedServer answers with the Idempotency-Key it got, as the body and
// replayed when the key was seen before, and passes every request's key
// to got.
func keyedServer(got chan<- string) http.HandlerFunc {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // only to have read it
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		replayed := seen[key]
		seen[key] = true
		mu.Unlock()
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		_, _ = io.WriteString(w, `{"id":"`+key+`"}`) // the client's to check
		got <- key
	}
}

// TestExchangeKeyAnswerAbandon: both ways to post (keepAliveConn for
// http://, net/http for https://) send the key, keep the body, read
// Idempotent-Replayed, and hang up on an abandoned request once it is
// written: over plain http the server still gets it.
func TestExchangeKeyAnswerAbandon(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[tls], func(t *testing.T) {
			got := make(chan string, 10)
			srv := httptest.NewUnstartedServer(keyedServer(got))
			if tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			r := &runner{e: &Engine{APIKey: "k", RequestTimeout: 5 * time.Second}, auth: bearer("k"), http: srv.Client(), sendTo: []string{srv.URL + "/send"}}
			s, err := r.newSender(nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if tls != (s.conns[0] == nil) {
				t.Fatalf("keepAliveConn %v for %s", s.conns[0], srv.URL)
			}
			for i, want := range []bool{false, true} {
				a, errClass := s.exchange(context.Background(), 0, "application/json", []byte("{}"), postOpts{key: "k1", keep: true})
				if errClass != "" || a.code != 200 || string(a.body) != `{"id":"k1"}` || a.replayed != want {
					t.Fatalf("post %d = %d %q replayed %v, %q; want 200 {\"id\":\"k1\"} replayed %v", i, a.code, a.body, a.replayed, errClass, want)
				}
				<-got // sent before the handler returned
			}
			a, errClass := s.exchange(context.Background(), 0, "application/json", []byte("{}"), postOpts{key: "k2", abandon: true})
			if errClass != "abandoned" || a.code != 0 {
				t.Errorf("abandoned post = %d, %q; want 0, abandoned", a.code, errClass)
			}
			if tls {
				// net/http resets the TLS connection when the request is
				// cancelled; bytes the server had not read yet go with it.
				// Whether it got them is a race, so only the answer is
				// checked here.
				return
			}
			select {
			case key := <-got:
				if key != "k2" {
					t.Errorf("the server got key %q, want k2", key)
				}
			case <-time.After(5 * time.Second):
				t.Error("the abandoned request never reached the server")
			}
		})
	}
}
