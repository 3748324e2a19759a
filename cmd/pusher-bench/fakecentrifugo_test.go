package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// cfFaults makes the fake Centrifugo misbehave, or behave as the real
// one does under load.
type cfFaults struct {
	dropEvery    int64         // this publication (counted from 1) reaches no connection
	batch        bool          // what is queued on a connection goes out in one frame, a line each
	pingInterval time.Duration // pings this often; a ping unanswered at the next closes 3012 (0: no pings)
	noSub        bool          // the connect reply lists no subscription
	refuse       bool          // every publish is answered 200 with {"error"}, and nothing is sent
}

// fakeCentrifugo is the part of Centrifugo v6 that the tool uses:
// /connection/websocket with the JSON protocol (a connect command with an
// HS256 token, claim sub; a reply whose subs list the user's personal
// channel personal:#<uid>; pushes of its publications; pings {} to be
// answered with {}), POST /api/publish with X-API-Key (200 with
// {"error"} for a channel outside the namespace), and /metrics with
// centrifugo_node_num_clients.
type fakeCentrifugo struct {
	*httptest.Server
	f        cfFaults
	upgrader websocket.Upgrader

	mu    sync.Mutex
	chans map[string][]*cfFakeConn // by channel

	published atomic.Int64
	pongs     atomic.Int64
	wg        sync.WaitGroup // the handlers and writers of connections
}

type cfFakeConn struct {
	ws     *websocket.Conn
	out    chan []byte // closed by the reader after it unregisters, under mu
	pinged atomic.Bool // a ping is not answered yet
}

func newFakeCentrifugo(t *testing.T, f cfFaults) *fakeCentrifugo {
	t.Helper()
	fc := &fakeCentrifugo{f: f, chans: map[string][]*cfFakeConn{}}
	mux := http.NewServeMux()
	mux.HandleFunc(centrifugoWSPath, fc.serveWS)
	mux.HandleFunc(centrifugoPublishPath, fc.servePublish)
	mux.HandleFunc("/metrics", fc.serveMetrics)
	fc.Server = httptest.NewServer(mux)
	t.Cleanup(fc.close)
	return fc
}

// close stops the listener, ends every connection and waits for their
// goroutines.
func (fc *fakeCentrifugo) close() {
	fc.Server.Close()
	fc.mu.Lock()
	for _, cs := range fc.chans {
		for _, c := range cs {
			c.ws.Close()
		}
	}
	fc.mu.Unlock()
	fc.wg.Wait()
}

func (fc *fakeCentrifugo) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := fc.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	fc.wg.Add(1)
	defer fc.wg.Done()
	defer ws.Close()
	channel, reply, ok := fc.connect(ws)
	if !ok {
		return
	}
	c := &cfFakeConn{ws: ws, out: make(chan []byte, 4096)}
	c.out <- reply // before any publication, as Centrifugo does
	fc.mu.Lock()
	fc.chans[channel] = append(fc.chans[channel], c)
	fc.mu.Unlock()
	fc.wg.Go(func() { fc.write(c) })
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			break
		}
		// After the connect, the tool's only command is the pong.
		if string(msg) != "{}" || !c.pinged.CompareAndSwap(true, false) {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(3501, "bad request"), time.Now().Add(time.Second))
			break
		}
		fc.pongs.Add(1)
	}
	ws.Close()
	fc.mu.Lock()
	cs := fc.chans[channel]
	for i := range cs {
		if cs[i] == c {
			fc.chans[channel] = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
	if len(fc.chans[channel]) == 0 {
		delete(fc.chans, channel)
	}
	close(c.out)
	fc.mu.Unlock()
}

// connect reads the connect command and checks its token: it returns the
// user's channel and the reply to send, or closes ws as Centrifugo does
// (3500 invalid token).
func (fc *fakeCentrifugo) connect(ws *websocket.Conn) (string, []byte, bool) {
	_, msg, err := ws.ReadMessage()
	if err != nil {
		return "", nil, false
	}
	var cmd struct {
		ID      uint32 `json:"id"`
		Connect *struct {
			Token string `json:"token"`
		} `json:"connect"`
	}
	var claims jwt.RegisteredClaims
	ok := json.Unmarshal(msg, &cmd) == nil && cmd.ID != 0 && cmd.Connect != nil
	if ok {
		_, err := jwt.ParseWithClaims(cmd.Connect.Token, &claims, func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
			jwt.WithValidMethods([]string{"HS256"}))
		ok = err == nil && claims.Subject != ""
	}
	if !ok {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(3500, "invalid token"), time.Now().Add(time.Second))
		return "", nil, false
	}
	channel := personalChannel("personal", claims.Subject)
	subs := fmt.Sprintf(`{%q:{}}`, channel)
	if fc.f.noSub {
		subs = "{}"
	}
	reply := fmt.Appendf(nil, `{"id":%d,"connect":{"client":"c","version":"0.0.0","subs":%s,"ping":25,"pong":true}}`, cmd.ID, subs)
	return channel, reply, true
}

// write sends what is queued on c, and pings.
func (fc *fakeCentrifugo) write(c *cfFakeConn) {
	var tick <-chan time.Time
	if fc.f.pingInterval > 0 {
		t := time.NewTicker(fc.f.pingInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case m, ok := <-c.out:
			if !ok {
				return
			}
			if fc.f.batch {
				m = bytes.Clone(m)
			more:
				for {
					select {
					case n, ok := <-c.out:
						if !ok {
							break more
						}
						m = append(append(m, '\n'), n...)
					default:
						break more
					}
				}
			}
			if c.ws.WriteMessage(websocket.TextMessage, m) != nil {
				c.ws.Close() // the reader ends and closes out
			}
		case <-tick:
			if c.pinged.Swap(true) {
				_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(3012, "no pong"), time.Now().Add(time.Second))
				c.ws.Close()
				continue
			}
			if c.ws.WriteMessage(websocket.TextMessage, []byte("{}")) != nil {
				c.ws.Close()
			}
		}
	}
}

func (fc *fakeCentrifugo) servePublish(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-API-Key") != testAPIKey {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	var body struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || !json.Valid(body.Data) {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	// As Centrifugo: a refusal is a 200 with an error.
	case !strings.HasPrefix(body.Channel, "personal:#"):
		_, _ = fmt.Fprint(w, `{"error":{"code":102,"message":"unknown channel"}}`) // a client that hung up is the tool's to count
		return
	case fc.f.refuse:
		_, _ = fmt.Fprint(w, `{"error":{"code":103,"message":"permission denied"}}`)
		return
	}
	n := fc.published.Add(1)
	if !every(fc.f.dropEvery, n) {
		push := fmt.Appendf(nil, `{"push":{"channel":%q,"pub":{"data":%s,"offset":%d}}}`, body.Channel, body.Data, n)
		fc.mu.Lock()
		for _, c := range fc.chans[body.Channel] {
			select {
			case c.out <- push:
			default: // a full queue drops, as a slow consumer's would
			}
		}
		fc.mu.Unlock()
	}
	_, _ = fmt.Fprintf(w, `{"result":{"offset":%d,"epoch":"e"}}`, n) // a client that hung up is the tool's to count
}

func (fc *fakeCentrifugo) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	fc.mu.Lock()
	conns := 0
	for _, cs := range fc.chans {
		conns += len(cs)
	}
	users := len(fc.chans)
	fc.mu.Unlock()
	// A client that hung up is the tool's to notice, not the fake's.
	_, _ = fmt.Fprintf(w, "# TYPE centrifugo_node_num_clients gauge\ncentrifugo_node_num_clients %d\ncentrifugo_node_num_users %d\n"+
		"go_goroutines %d\nprocess_cpu_seconds_total 1.5\nprocess_resident_memory_bytes 1e+07\n",
		conns, users, runtime.NumGoroutine())
}
