package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

const (
	testSecret = "test-secret-test-secret-test-secret"
	testAPIKey = "test-api-key"
)

// faults makes the fake server misbehave, to see the report show it.
// Every field counts messages queued on connections, from 1; 0 is off.
type faults struct {
	dropEvery     int64 // this message is not sent
	dupEvery      int64 // this message is sent twice
	swapEvery     int64 // this message is sent after the next one to the same connection
	notFoundEvery int64 // this /send (counted by requests) answers 404 although the uid is connected
	leakConns     bool  // closed connections stay counted
	hangUpAfter   int64 // /send requests after this many get no answer: the connection is dropped
	refuseEvery   int64 // this handshake (counted from 1) is refused with 503

	// Recovery (format=json, since=).
	acceptDropEvery int64 // this /send (counted by requests) answers 200 but stores and sends nothing
	replayGap       bool  // a replay that has messages skips its first one, and still says recovered
	replayRepeat    bool  // a replay starts at the since offset itself: the client gets it twice
	historySize     int   // messages kept per uid (0: 100)

	// /send/batch and idempotency keys (fakebatch_test.go).
	maxBatch         int   // items in one /send/batch (0: 1000); more: 413
	hangUpKeyedEvery int64 // this keyed request (counted by keyed requests) is handled, then dropped unanswered: the client sees no answer
	hangUpUnsent     bool  // with hangUpKeyedEvery: that request remembers its keys but sends nothing (acknowledged, never delivered)
	forgetKeys       bool  // keys are ignored: a retry or a repeat is sent again
	conflictEvery    int64 // this keyed message (counted by keys) is answered 409, and nothing is done
	reuseEvery       int64 // this keyed message (counted by keys) is answered 422, and nothing is done
}

// fakeServer is a small push server with go-pusher's contract: /ws with
// ?token= (HS256, claim uid), format=json and since=, /send with the API
// key and a JSON or form body, /send/batch, idempotency keys on both,
// /metrics with connections, pending, pusher_users, go_goroutines. Its history lives in memory and is read
// under the same lock that registers the connection, so a replay is
// exact.
type fakeServer struct {
	*httptest.Server
	f        faults
	upgrader websocket.Upgrader

	mu      sync.Mutex
	conns   map[string][]*fakeConn
	history map[string]*fakeHistory
	keys    map[string]fakeKey // idempotency keys answered 200
	leaked  int

	nodes []*httptest.Server // more listeners on the same server: a "cluster" sharing one state
	hits  map[string]int     // "ws host:port" and "send host:port": requests by listener

	queued   atomic.Int64 // messages queued, for the faults
	dials    atomic.Int64
	requests atomic.Int64
	keyedReq atomic.Int64 // requests with a key, for hangUpKeyedEvery
	keyN     atomic.Int64 // keyed messages, for conflictEvery and reuseEvery
	pending  atomic.Int64
	wg       sync.WaitGroup // handlers and writers of WebSocket connections
}

type fakeConn struct {
	ws   *websocket.Conn
	json bool        // format=json
	out  chan []byte // closed by the reader after it unregisters, under mu
	held []byte      // swapEvery: the message to send after the next
}

// fakeHistory is a uid's offsets and latest messages (as JSON frames).
type fakeHistory struct {
	epoch   string
	n       uint64
	entries []fakeEntry // oldest first
}

type fakeEntry struct {
	off   uint64
	frame []byte
}

func newFakeServer(t *testing.T, f faults) *fakeServer {
	t.Helper()
	fs := &fakeServer{f: f, conns: map[string][]*fakeConn{}, history: map[string]*fakeHistory{}, keys: map[string]fakeKey{}, hits: map[string]int{}}
	if fs.f.historySize == 0 {
		fs.f.historySize = 100
	}
	if fs.f.maxBatch == 0 {
		fs.f.maxBatch = 1000
	}
	fs.Server = httptest.NewServer(fs.mux())
	t.Cleanup(fs.close)
	return fs
}

func (fs *fakeServer) mux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", fs.serveWS)
	mux.HandleFunc("/send", fs.serveSend)
	mux.HandleFunc("/send/batch", fs.serveBatch)
	mux.HandleFunc("/metrics", fs.serveMetrics)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		fs.hits[strings.TrimPrefix(r.URL.Path, "/")+" "+r.Host]++
		fs.mu.Unlock()
		mux.ServeHTTP(w, r)
	})
}

// addNode starts another listener on the same server state, as a second
// node of a cluster, and returns its URL. Call it before the run.
func (fs *fakeServer) addNode() string {
	n := httptest.NewServer(fs.mux())
	fs.nodes = append(fs.nodes, n)
	return n.URL
}

// hitsOf returns how many requests of kind ("ws", "send") the listener
// at url served.
func (fs *fakeServer) hitsOf(kind, url string) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.hits[kind+" "+strings.TrimPrefix(url, "http://")]
}

// close stops the listeners, then ends every WebSocket connection (which
// httptest forgets once hijacked) and waits for their goroutines.
func (fs *fakeServer) close() {
	fs.Server.Close()
	for _, n := range fs.nodes {
		n.Close()
	}
	fs.mu.Lock()
	for _, cs := range fs.conns {
		for _, c := range cs {
			c.ws.Close()
		}
	}
	fs.mu.Unlock()
	fs.wg.Wait()
}

func (fs *fakeServer) serveWS(w http.ResponseWriter, r *http.Request) {
	if every(fs.f.refuseEvery, fs.dials.Add(1)) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	var claims struct {
		UID string `json:"uid"`
		jwt.RegisteredClaims
	}
	_, err := jwt.ParseWithClaims(r.URL.Query().Get("token"), &claims, func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
		jwt.WithValidMethods([]string{"HS256"}))
	q := r.URL.Query()
	asJSON := q.Get("format") == "json" || q.Has("since")
	var sinceEpoch string
	var sinceN uint64
	if q.Has("since") {
		var ok bool
		if sinceEpoch, sinceN, ok = parseOffset(q.Get("since")); !ok {
			http.Error(w, "malformed since", http.StatusBadRequest)
			return
		}
	}
	ws, uerr := fs.upgrader.Upgrade(w, r, nil)
	if uerr != nil {
		return
	}
	if err != nil || claims.UID == "" {
		// As go-pusher: the reason as a text message, then close 1008.
		// The client may be gone already: nothing to do then.
		_ = ws.WriteMessage(websocket.TextMessage, []byte("authenticate error: token is invalid"))
		_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "token is invalid"))
		ws.Close()
		return
	}
	c := &fakeConn{ws: ws, json: asJSON, out: make(chan []byte, 4096)}
	fs.mu.Lock()
	fs.conns[claims.UID] = append(fs.conns[claims.UID], c)
	if q.Has("since") {
		fs.replay(c, claims.UID, sinceEpoch, sinceN)
	}
	fs.mu.Unlock()

	fs.wg.Go(func() {
		for m := range c.out {
			if err := ws.WriteMessage(websocket.TextMessage, m); err != nil {
				ws.Close()
			}
			fs.pending.Add(-1)
		}
	})
	fs.wg.Add(1)
	defer fs.wg.Done()
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
	}
	ws.Close()
	fs.mu.Lock()
	if fs.f.leakConns {
		fs.leaked++
	}
	cs := fs.conns[claims.UID]
	for i := range cs {
		if cs[i] == c {
			fs.conns[claims.UID] = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
	if len(fs.conns[claims.UID]) == 0 {
		delete(fs.conns, claims.UID)
	}
	close(c.out)
	fs.mu.Unlock()
}

func (fs *fakeServer) serveSend(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+testAPIKey {
		http.Error(w, "bad key", http.StatusUnauthorized)
		return
	}
	var body struct {
		UID     string   `json:"uid"`
		UIDs    []string `json:"uids"`
		Message string   `json:"message"`
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	} else {
		body.UID, body.Message = r.FormValue("uid"), r.FormValue("message")
	}
	n := fs.requests.Add(1)
	if fs.f.hangUpAfter > 0 && n > fs.f.hangUpAfter {
		hangUp(w)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	hang := key != "" && every(fs.f.hangUpKeyedEvery, fs.keyedReq.Add(1))
	fs.mu.Lock()
	status, answer, replayed := fs.sendKeyed(key, body.UID, body.UIDs, body.Message, n, hang && fs.f.hangUpUnsent)
	fs.mu.Unlock()
	switch {
	case hang:
		hangUp(w)
	case status != http.StatusOK:
		http.Error(w, answer, status)
	default:
		w.Header().Set("Content-Type", "application/json")
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		_, _ = io.WriteString(w, answer+"\n") // a client that hung up is the tool's to count, not the fake's
	}
}

// hangUp drops the connection of w without an answer.
func hangUp(w http.ResponseWriter) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		conn.Close()
	}
}

// sendOne sends message to uid (a unicast, when uids is nil) or to uids,
// as /send request n would, unless skip, and returns the status and the
// answer: the JSON object for a 200, else the reason. Callers hold mu.
func (fs *fakeServer) sendOne(uid string, uids []string, message string, n int64, skip bool) (int, string) {
	if uids == nil && (len(fs.conns[uid]) == 0 || every(fs.f.notFoundEvery, n)) {
		return http.StatusNotFound, "client not found: " + uid
	}
	if uids == nil {
		uids = []string{uid}
	}
	id := strconv.FormatInt(n, 10)
	if !skip && !every(fs.f.acceptDropEvery, n) {
		for _, uid := range uids {
			cs := fs.conns[uid]
			if len(cs) == 0 {
				continue // nothing stored for a uid without a connection
			}
			frame := fs.store(uid, id, message)
			for _, c := range cs {
				if c.json {
					fs.queue(c, frame)
				} else {
					fs.queue(c, []byte(message))
				}
			}
		}
	}
	return http.StatusOK, `{"id":"` + id + `"}`
}

// store gives message the uid's next offset, keeps its JSON frame in the
// uid's history and returns it. Callers hold mu.
func (fs *fakeServer) store(uid, id, message string) []byte {
	h := fs.history[uid]
	if h == nil {
		h = &fakeHistory{epoch: "e" + strconv.Itoa(len(fs.history))}
		fs.history[uid] = h
	}
	h.n++
	msg, _ := json.Marshal(message) // a string always marshals
	frame := fmt.Appendf(nil, `{"id":%q,"offset":"%s:%d","message":%s}`, id, h.epoch, h.n, msg)
	h.entries = append(h.entries, fakeEntry{off: h.n, frame: frame})
	if len(h.entries) > fs.f.historySize {
		h.entries = h.entries[1:]
	}
	return frame
}

// replay queues on c what its uid has after since, then {"recovered":
// true}, or only {"recovered": false} when history lacks some of it.
// Callers hold mu, and registered c under it: the live stream follows.
func (fs *fakeServer) replay(c *fakeConn, uid, epoch string, since uint64) {
	h := fs.history[uid]
	ok := h != nil && h.epoch == epoch && since <= h.n
	var frames [][]byte
	if ok && since < h.n {
		if len(h.entries) == 0 || h.entries[0].off > since+1 {
			ok = false
		}
		for _, e := range h.entries {
			if e.off > since || fs.f.replayRepeat && e.off == since {
				frames = append(frames, e.frame)
			}
		}
		if fs.f.replayGap && len(frames) > 0 {
			frames = frames[1:]
		}
	}
	if !ok {
		frames = nil
	}
	for _, f := range frames {
		fs.push(c, f)
	}
	fs.push(c, fmt.Appendf(nil, `{"recovered":%v}`, ok))
}

// push puts m on c's queue without faults; a full queue drops it.
func (fs *fakeServer) push(c *fakeConn, m []byte) {
	select {
	case c.out <- m:
		fs.pending.Add(1)
	default:
	}
}

// queue puts m on c's queue, with the faults. Callers hold mu, so c.out
// is open.
func (fs *fakeServer) queue(c *fakeConn, m []byte) {
	n := fs.queued.Add(1)
	push := func(m []byte) { fs.push(c, m) } // a full queue drops, as a slow consumer would
	switch {
	case every(fs.f.dropEvery, n):
		return
	case every(fs.f.dupEvery, n):
		push(m)
		push(m)
	case every(fs.f.swapEvery, n) && c.held == nil:
		c.held = m
	default:
		push(m)
		if c.held != nil {
			push(c.held)
			c.held = nil
		}
	}
}

func every(k, n int64) bool { return k > 0 && n%k == 0 }

func (fs *fakeServer) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	fs.mu.Lock()
	conns := fs.leaked
	for _, cs := range fs.conns {
		conns += len(cs)
	}
	users := len(fs.conns)
	fs.mu.Unlock()
	// A client that hung up is the tool's to notice, not the fake's.
	_, _ = fmt.Fprintf(w, "# HELP connections Open connections.\n# TYPE connections gauge\nconnections %d\n"+
		"pending %d\npusher_users %d\ngo_goroutines %d\n"+
		"pusher_messages_failed_total{reason=\"closed\"} 1\npusher_messages_failed_total{reason=\"slow_consumer\"} 2\n"+
		"process_cpu_seconds_total 1.5\nprocess_resident_memory_bytes 1e+07\n",
		conns, fs.pending.Load(), users, runtime.NumGoroutine())
}
