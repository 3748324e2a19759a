package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go-pusher/message"
)

// rawExchange writes req on a new connection to addr, half-closes it and
// returns every answer read until the server closes, each as status,
// headers (without Date) and body with the message id masked.
func rawExchange(t *testing.T, addr, req string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	br := bufio.NewReader(c)
	var got []string
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
				t.Fatalf("read answer %d: %v", len(got)+1, err)
			}
			return got
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Header.Del("Date")
		// net/http chunks an answer over 2 KiB; the lane sends its length.
		resp.Header.Del("Content-Length")
		resp.Header.Del("Transfer-Encoding")
		var keys []string
		for k, vs := range resp.Header {
			keys = append(keys, k+": "+strings.Join(vs, ","))
		}
		slices.Sort(keys)
		got = append(got, resp.Status+"\n"+strings.Join(keys, "\n")+"\n\n"+idRE.ReplaceAllString(string(body), `"id":"ID"`))
	}
}

var idRE = regexp.MustCompile(`"id":"[0-9a-v]{20}"`)

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// TestFastLaneAnswersAsNetHTTP sends the same bytes to a server with the
// fast lane and to one without: every answer must be the same, whether
// the lane answered it or handed it to net/http.
func TestFastLaneAnswersAsNetHTTP(t *testing.T) {
	lane := startServer(t, testConfig(t))
	plain := startServer(t, testConfig(t, "-fast-send=false"))
	if lane.lane == nil || plain.lane != nil {
		t.Fatalf("lane %v, plain %v: want the lane only on the first", lane.lane, plain.lane)
	}
	for _, ts := range []*testServer{lane, plain} {
		ts.dial("u1")
		waitFor(t, "u1 registered", func() bool { c, _ := ts.send("application/json", `{"uid":"u1","message":"x"}`); return c == 200 })
	}
	key := "Authorization: Bearer " + testAPIKey + "\r\n"
	post := func(head, body string) string {
		return "POST /send HTTP/1.1\r\nHost: h\r\n" + head + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	}
	cases := []struct {
		name, req string
		byLane    uint64 // answers the lane gives; net/http the rest
	}{
		{"json", post(key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 1},
		{"form", post(key+"Content-Type: application/x-www-form-urlencoded\r\n", "uid=u1&message=hi"), 1},
		{"query only", "POST /send?uid=u1&message=hi HTTP/1.1\r\nHost: h\r\n" + key + "Content-Length: 0\r\n\r\n", 1},
		{"lower-case names", "POST /send HTTP/1.1\r\nhost: h\r\nauthorization: Bearer " + testAPIKey + "\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n" + `{"uid":"u1","message":"hi"}`, 1},
		{"multicast", post(key+"Content-Type: application/json\r\n", `{"uids":["u1","nobody"],"message":"hi"}`), 1},
		{"large answer", post(key+"Content-Type: application/json\r\n", `{"uids":["u1"`+strings.Repeat(`,"nobody-with-a-long-name"`, 200)+`],"message":"hi"}`), 1},
		{"unread body under 256 KiB", post("Content-Type: application/json\r\n", strings.Repeat("x", 256<<10-1)) + post(key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 2},
		{"unread body of 256 KiB", post("Content-Type: application/json\r\n", strings.Repeat("x", 256<<10)) + post(key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 1},
		{"offline", post(key+"Content-Type: application/json\r\n", `{"uid":"nobody","message":"hi"}`), 1},
		{"bad json", post(key+"Content-Type: application/json\r\n", `{"uid":`), 1},
		{"bad type", post(key+"Content-Type: text/xml\r\n", `<x/>`), 1},
		{"no key", post("Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 1},
		{"wrong key", post("Authorization: Bearer nope\r\nContent-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 1},
		{"two keys", post(key+key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 0},
		{"connection close", post(key+"Connection: close\r\nContent-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 1},
		{"pipelined", strings.Repeat(post(key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 3), 3},
		{"key, then none", post(key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`) + post("Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 2},
		{"form, then another", post(key+"Content-Type: application/x-www-form-urlencoded\r\n", "uid=u1&message=one") + post(key+"Content-Type: application/x-www-form-urlencoded\r\n", "uid=nobody&message=two"), 2},
		{"query, then body", "POST /send?uid=u1&message=q HTTP/1.1\r\nHost: h\r\n" + key + "Content-Length: 0\r\n\r\n" + post(key+"Content-Type: application/json\r\n", `{"uid":"nobody","message":"hi"}`), 2},
		{"multipart, then json", post(key+"Content-Type: multipart/form-data; boundary=b\r\n", "--b\r\nContent-Disposition: form-data; name=\"uid\"\r\n\r\nu1\r\n--b\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nmp\r\n--b--\r\n") + post(key+"Content-Type: application/json\r\n", `{"uid":"nobody","message":"hi"}`), 2},
		{"then other paths", post(key+"Content-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`) + "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", 1},
		{"body longer than told", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n" + `{"uid":"u1","message":"hi"}`, 1},
		{"get", "GET /send HTTP/1.1\r\nHost: h\r\n" + key + "\r\n", 0},
		{"other path", post(key+"Content-Type: application/json\r\n", "{}")[:len("POST /send")] + "x" + post(key, "{}")[len("POST /send"):], 0},
		{"http/1.0", "POST /send HTTP/1.0\r\nHost: h\r\n" + key + "Content-Type: application/json\r\nContent-Length: 27\r\n\r\n" + `{"uid":"u1","message":"hi"}`, 0},
		{"chunked", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\n" + `{"uid":"u1","message":"hi"}` + "\r\n0\r\n\r\n", 0},
		{"chunked and length", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 27\r\n\r\n1b\r\n" + `{"uid":"u1","message":"hi"}` + "\r\n0\r\n\r\n", 0},
		{"expect", post(key+"Expect: 100-continue\r\nContent-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 0},
		{"two lengths", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", 0},
		{"signed length", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Length: +2\r\n\r\n{}", 0},
		{"no length", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Type: application/json\r\n\r\n", 0},
		{"no host", "POST /send HTTP/1.1\r\n" + key + "Content-Length: 2\r\n\r\n{}", 0},
		{"two hosts", "POST /send HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + key + "Content-Length: 2\r\n\r\n{}", 0},
		{"bad host", "POST /send HTTP/1.1\r\nHost: a b\r\n" + key + "Content-Length: 2\r\n\r\n{}", 0},
		{"folded header", post(key+"Content-Type: application/json\r\n X-Fold: y\r\n", `{"uid":"u1","message":"hi"}`), 0},
		{"space before colon", post(key+"Content-Type : application/json\r\n", `{"uid":"u1","message":"hi"}`), 0},
		{"control in value", post(key+"X-A: a\x01b\r\nContent-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 0},
		{"upgrade", post(key+"Connection: Upgrade\r\nUpgrade: websocket\r\n", "{}"), 0},
		{"too large", "POST /send HTTP/1.1\r\nHost: h\r\n" + key + "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{}", 0},
		{"long head", post(key+"X-Pad: "+strings.Repeat("p", 5000)+"\r\nContent-Type: application/json\r\n", `{"uid":"u1","message":"hi"}`), 0},
		{"cut short", "POST /send HTTP/1.1\r\nHost: h\r\n", 0},
		{"garbage", "POST /send\x00 HTTP/1.1\r\n\r\n", 0},
		{"first packet short", "POS", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := rawExchange(t, plain.opsAddr(), tc.req)
			served := lane.lane.served.Load()
			got := rawExchange(t, lane.opsAddr(), tc.req)
			if !slices.Equal(got, want) {
				t.Errorf("with the fast lane:\n%s\nwithout:\n%s", strings.Join(got, "\n----\n"), strings.Join(want, "\n----\n"))
			}
			if n := lane.lane.served.Load() - served; n != tc.byLane {
				t.Errorf("the lane gave %d of the %d answers; want %d", n, len(got), tc.byLane)
			}
		})
	}
}

// opsAddr is the address of /send.
func (ts *testServer) opsAddr() string { return strings.TrimPrefix(ts.opsURL(), "http://") }

// A head that arrives in pieces is read whole before it is answered.
func TestFastLaneHeadInPieces(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u1")
	ts.sendOK("u1", "first")
	readText(t, conn)
	c, err := net.Dial("tcp", ts.opsAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"uid":"u1","message":"pieces"}`
	req := "POST /send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + testAPIKey + "\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	for i := range len(req) { // one write per byte: however TCP groups them
		if _, err := c.Write([]byte{req[i]}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("answer %v, %v; want 200", resp, err)
	}
	if got := readText(t, conn); got != "pieces" {
		t.Errorf("pushed %q; want %q", got, "pieces")
	}
	if ts.lane.served.Load() == 0 {
		t.Error("the lane answered nothing")
	}
}

// panickyLog panics on Log, as a bug in a logger would.
type panickyLog struct{ message.NoneLogger }

func (panickyLog) Log(context.Context, message.Log) error { panic("logger bug") }

// A panic in the handler closes that connection and is logged; the
// server goes on, as with net/http.
func TestFastLaneSurvivesAPanic(t *testing.T) {
	ts := startServerLog(t, testConfig(t), panickyLog{})
	ts.dial("u1")
	req := "POST /send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + testAPIKey + "\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n" + `{"uid":"u1","message":"hi"}`
	waitFor(t, "the panic logged", func() bool {
		if got := rawExchange(t, ts.opsAddr(), req); len(got) > 0 && !strings.HasPrefix(got[0], "404 ") {
			t.Fatalf("answers %q; want none (the connection closes)", got)
		}
		return strings.Contains(ts.logBuf.String(), "panic serving /send")
	})
	if code, _ := ts.get("/healthz"); code != 200 {
		t.Errorf("/healthz after the panic = %d; want 200", code)
	}
}

// With -internal-addr, /send is only on the internal listener, and so is
// the lane: the public one answers 404 as before.
func TestFastLaneOnlyWhereSendIs(t *testing.T) {
	ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0"))
	ts.dial("u1")
	req := "POST /send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + testAPIKey + "\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n" + `{"uid":"u1","message":"hi"}`
	if got := rawExchange(t, ts.Addr(), req); len(got) != 1 || !strings.HasPrefix(got[0], "404 ") {
		t.Errorf("POST /send on the public listener: %q; want one 404", got)
	}
	waitFor(t, "a 200 from the internal listener's lane", func() bool {
		got := rawExchange(t, ts.InternalAddr(), req)
		return len(got) == 1 && strings.HasPrefix(got[0], "200 ") && ts.lane.served.Load() > 0
	})
}

// A /ws connection never passes through the lane: it keeps the
// *net.TCPConn that writes in place and writev need.
func TestFastLaneLeavesWebSocketsAlone(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u1")
	ts.sendOK("u1", "hello")
	if got := readText(t, conn); got != "hello" {
		t.Fatalf("got %q", got)
	}
	cs := ts.hub.clients("u1")
	if len(cs) != 1 {
		t.Fatalf("u1 has %d connections", len(cs))
	}
	if _, ok := cs[0].raw.(*net.TCPConn); !ok || cs[0].rc == nil {
		t.Errorf("the connection is a %T (raw conn %v); want a *net.TCPConn with its RawConn", cs[0].raw, cs[0].rc)
	}
}

// Shutdown closes the lane's kept-alive connections that wait for a
// request, and Serve returns (goleak checks that no goroutine is left).
func TestFastLaneShutdownClosesIdleConnections(t *testing.T) {
	ts := startServer(t, testConfig(t, "-shutdown-timeout", "30s")) // far above the 5 s this allows
	ts.dial("u1")
	c, err := net.Dial("tcp", ts.opsAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	body := `{"uid":"u1","message":"hi"}`
	waitFor(t, "a 200 on the kept-alive connection", func() bool {
		io.WriteString(c, "POST /send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "+testAPIKey+"\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n"+body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode == 200
	})
	if ts.lane.open() != 1 {
		t.Fatalf("lane holds %d connections; want the one kept alive", ts.lane.open())
	}
	start := time.Now()
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("shutdown took %s with an idle lane connection", took)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("idle connection after shutdown: read %d, %v; want it closed", n, err)
	}
}

// A head that does not arrive within the header timeout, or a body
// within the body timeout, closes the connection without an answer.
func TestFastLaneTimeouts(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := newFastLane(ts.Server, ln, laneLimits{headerTimeout: 100 * time.Millisecond, bodyTimeout: 100 * time.Millisecond,
		idleTimeout: 100 * time.Millisecond, writeTimeout: time.Second, maxBody: 1 << 20})
	defer func() {
		f.Close()
		f.wait(t.Context())
	}()
	cases := []struct{ name, req, answer string }{
		{"first byte", "", ""},
		{"head", "POST /send HTTP/1.1\r\nHost: h\r\n", ""},
		{"idle after a request", "POST /send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + testAPIKey + "\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		// The handler's read of the body fails: it answers, and the
		// connection closes (what is left of the body cannot be skipped).
		{"body", "POST /send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + testAPIKey + "\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{", "HTTP/1.1 400 Bad Request"},
	}
	// Every request is written before the lane accepts: each timeout
	// starts with the bytes there already, however slow this test runs.
	conns := make([]net.Conn, len(cases))
	for i, tc := range cases {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, tc.req)
		conns[i] = c
	}
	start := time.Now()
	f.start()
	for i, tc := range cases {
		c := conns[i]
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if !strings.HasPrefix(string(got), tc.answer) || err != nil && !isReset(err) || time.Since(start) > 4*time.Second {
			t.Errorf("%s: read %q, %v after %s; want %q and the connection closed after 100 ms", tc.name, got, err, time.Since(start), tc.answer)
		}
	}
}

// FuzzLaneHead: a head the lane answers is one net/http reads the same
// way: POST /send, the same query, Host, Content-Length, Content-Type,
// Authorization and Connection: close, and no other framing.
func FuzzLaneHead(f *testing.F) {
	f.Add([]byte("POST /send HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"))
	f.Add([]byte("POST /send?uid=a&message=b HTTP/1.1\r\nhost: h:1\r\nauthorization: Bearer k\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"))
	f.Add([]byte("POST /send HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("POST /send HTTP/1.1\r\nHost: h\r\nX: \t a \t\r\nContent-Length: 02\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		i := bytes.Index(b, []byte("\r\n\r\n"))
		if i < 0 {
			return
		}
		b = b[:i+4]
		h, verdict := parseHead(b)
		if verdict != laneServe {
			return
		}
		const next = "GET /next HTTP/1.1\r\nHost: n\r\n\r\n"
		br := bufio.NewReader(io.MultiReader(bytes.NewReader(b), strings.NewReader(next)))
		r, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("lane serves %q; net/http refuses it: %v", b, err)
		}
		if rest, _ := io.ReadAll(br); string(rest) != next {
			t.Fatalf("head %q: net/http's ends elsewhere, before %q", b, rest)
		}
		want := laneHead{size: len(b), target: r.RequestURI, query: r.URL.RawQuery, host: r.Host,
			contentType: r.Header.Get("Content-Type"), authorization: r.Header.Get("Authorization"),
			contentLength: r.ContentLength, close: r.Close}
		if r.Method != http.MethodPost || r.URL.Path != "/send" || len(r.TransferEncoding) > 0 || h != want ||
			len(r.Header["Content-Type"]) > 1 || len(r.Header["Authorization"]) > 1 {
			t.Fatalf("head %q: lane read %+v; net/http %s %s %+v (transfer encoding %v, header %v)", b, h, r.Method, r.URL, want, r.TransferEncoding, r.Header)
		}
	})
}
