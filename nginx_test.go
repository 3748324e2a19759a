package main

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/sendreq"
)

// deploy/nginx/go-pusher.conf is checked three ways: docs/operations.md
// shows it as it is; `nginx -t` accepts it; and a real nginx built from it
// carries WebSockets to the built server (its public block) and the
// backends' requests to the server's -internal-addr (its backend block).

const nginxConfPath = "deploy/nginx/go-pusher.conf"

// backendListen is where the deploy file's backend block listens: a
// private address the test machines do not have.
const backendListen = "listen 10.0.0.5:8443 ssl;"

func nginxPath(t *testing.T) string {
	t.Helper()
	return deployTool(t, "nginx", "nginx", "/usr/sbin/nginx")
}

// TestNginxDocsShowDeployFile: the "Behind nginx" section of
// docs/operations.md shows the deploy file, byte for byte.
func TestNginxDocsShowDeployFile(t *testing.T) {
	docs := readDeployFile(t, "docs/operations.md")
	_, section, ok := strings.Cut(docs, "\n## Behind nginx\n")
	if !ok {
		t.Fatal(`docs/operations.md has no "## Behind nginx" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, block, ok := strings.Cut(section, "\n```nginx\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatal("the Behind nginx section has no ```nginx block")
	}
	if conf := readDeployFile(t, nginxConfPath); block != conf {
		t.Errorf("docs/operations.md shows another configuration than %s: copy the file into the section", nginxConfPath)
	}
}

// replaceOnce replaces old, which must occur exactly once: the tests
// change the deploy file in named places only, and notice when it moved.
func replaceOnce(t *testing.T, s, old, replacement string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("%s: %q occurs %d times, want once", nginxConfPath, old, n)
	}
	return strings.Replace(s, old, replacement, 1)
}

// TestNginxDeployConfig runs `nginx -t` on the committed file with these
// changes only: each server block's certificate paths pointed at a
// self-signed certificate made here, the backend block's private address
// replaced by a free loopback port (`nginx -t` binds it), and the /ws
// error log into the test's directory. It checks the timeouts against
// the server's defaults (the WebSocket's ping interval, the API's message
// log timeout) and the backend block's body limit against the server's
// largest body.
func TestNginxDeployConfig(t *testing.T) {
	nginx := nginxPath(t)
	conf := readDeployFile(t, nginxConfPath)
	for _, host := range []string{"push.example.com", "push-api.example.com"} {
		cert, key := selfSignedCert(t, host)
		conf = replaceOnce(t, conf, "/etc/ssl/"+host+"/fullchain.pem;", cert+";")
		conf = replaceOnce(t, conf, "/etc/ssl/"+host+"/privkey.pem;", key+";")
	}
	conf = replaceOnce(t, conf, backendListen, "listen 127.0.0.1:"+strconv.Itoa(freePort(t))+" ssl;")
	writeNginx(t, nginx, conf)

	cfg := testConfig(t)
	public, backend := nginxServerBlock(t, conf, "pusher"), nginxServerBlock(t, conf, "pusher_internal")
	if secs := nginxSeconds(t, public, "proxy_read_timeout"); secs <= 2*cfg.PingInterval {
		t.Errorf("/ws: proxy_read_timeout %v is not above twice the default -ping-interval %v: one lost ping would close connections", secs, cfg.PingInterval)
	}
	for _, d := range []string{"proxy_read_timeout", "proxy_send_timeout"} {
		if secs := nginxSeconds(t, backend, d); secs <= cfg.MessageLogTimeout {
			t.Errorf("backend block: %s %v is not above the default -message-log-timeout %v: nginx would answer 504 before the server answers", d, secs, cfg.MessageLogTimeout)
		}
	}
	// The largest body the server reads: a /send's, or a /send/batch's.
	limits := sendreq.Limits{MaxMessageSize: cfg.MaxMessageSize, MaxMulticast: cfg.MaxMulticast}
	largest := max(limits.MaxBody(), cfg.MaxBatchBytes)
	if size := nginxSize(t, backend, "client_max_body_size"); size < largest || size >= largest+1<<20 {
		t.Errorf("backend block: client_max_body_size %d bytes, want the server's largest body (%d bytes by default) rounded up to a MiB at most", size, largest)
	}
}

// nginxServerBlock is the server block of conf that proxies to upstream
// (and what follows it up to the next server block).
func nginxServerBlock(t *testing.T, conf, upstream string) string {
	t.Helper()
	for _, block := range strings.Split(conf, "\nserver {")[1:] {
		if strings.Contains(block, "proxy_pass http://"+upstream+";") {
			return block
		}
	}
	t.Fatalf("%s: no server block proxies to %s", nginxConfPath, upstream)
	return ""
}

// nginxSeconds is the value of directive in block, which must give it
// once, in seconds.
func nginxSeconds(t *testing.T, block, directive string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`\n\s*`+directive+` (\d+)s;`).FindAllStringSubmatch(block, -1)
	if len(m) != 1 {
		t.Fatalf("%s: want one %s in seconds in the block, found %d", nginxConfPath, directive, len(m))
	}
	secs, _ := strconv.Atoi(m[0][1]) // the pattern admits only digits
	return time.Duration(secs) * time.Second
}

// nginxSize is the value of directive in block, which must give it once,
// in bytes.
func nginxSize(t *testing.T, block, directive string) int64 {
	t.Helper()
	m := regexp.MustCompile(`\n\s*`+directive+` (\d+)([kKmMgG]?);`).FindAllStringSubmatch(block, -1)
	if len(m) != 1 {
		t.Fatalf("%s: want one %s in the block, found %d", nginxConfPath, directive, len(m))
	}
	n, _ := strconv.ParseInt(m[0][1], 10, 64) // the pattern admits only digits
	shift := map[string]int{"": 0, "k": 10, "m": 20, "g": 30}[strings.ToLower(m[0][2])]
	return n << shift
}

// TestNginxReaderClosesWithUnreadMessages: readConn's cleanup returns
// when the test left more messages unread than r.msgs holds.
func TestNginxReaderClosesWithUnreadMessages(t *testing.T) {
	r := startReader(wsSender(t, 40))
	waitFor(t, "r.msgs full", func() bool { return len(r.msgs) == cap(r.msgs) })
	time.Sleep(100 * time.Millisecond) // the goroutine reads one more and waits to send it
	closed := make(chan struct{})
	go func() {
		r.close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not return within 5s: the reader is stuck sending a message nobody reads")
	}
}

const nginxOrigin = "https://app.example.com"

// dialNginx opens /ws through nginx as a page of nginxOrigin would.
func dialNginx(t *testing.T, addr, uid string) *websocket.Conn {
	t.Helper()
	tok, err := IssueToken(testSecret, uid, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial("ws://"+addr+"/ws?token="+tok, http.Header{"Origin": {nginxOrigin}})
	if err != nil {
		t.Fatalf("dial /ws through nginx: %v (%v)", err, resp)
	}
	return conn
}

// TestNginxWebSocket: the built server behind a real nginx made from the
// deploy file, with proxy_read_timeout cut to 2 s and the server pinging
// every 500 ms.
func TestNginxWebSocket(t *testing.T) {
	const readTimeout = 2 * time.Second
	p := startBinary(t, buildBinary(t), []string{
		"-internal-addr", "127.0.0.1:0", "-message-log", "none", "-allowed-origins", nginxOrigin,
		"-ping-interval", "500ms", "-pong-wait", "5s",
	})
	internal := "http://" + internalAddr(t, p)
	front := startNginx(t, p.addr, internalAddr(t, p), readTimeout).public

	t.Run("browser origin receives a send", func(t *testing.T) {
		r := readConn(t, dialNginx(t, front, "alice"))
		if code, body, err := postSend(http.DefaultClient, internal, "alice", "hello"); code != http.StatusOK {
			t.Fatalf("/send on -internal-addr = %d %s %v", code, body, err)
		}
		wantRead(t, r, "hello")

		tok, _ := IssueToken(testSecret, "alice", time.Hour, time.Now())
		_, resp, err := websocket.DefaultDialer.Dial("ws://"+front+"/ws?token="+tok, http.Header{"Origin": {"https://evil.example"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("another origin through nginx: %v, %v; want 403 from the server", err, resp)
		}
	})

	t.Run("idle past proxy_read_timeout", func(t *testing.T) {
		r := readConn(t, dialNginx(t, front, "bob"))
		// Nothing but the server's pings for three read timeouts.
		select {
		case err := <-r.err:
			t.Fatalf("the idle connection ended: %v", err)
		case msg := <-r.msgs:
			t.Fatalf("unexpected message %q", msg)
		case <-time.After(3 * readTimeout):
		}
		if code, body, err := postSend(http.DefaultClient, internal, "bob", "still here"); code != http.StatusOK {
			t.Fatalf("/send = %d %s %v", code, body, err)
		}
		wantRead(t, r, "still here")
	})

	t.Run("only /ws and the console are public", func(t *testing.T) {
		// The backend endpoints, paths the server may gain later, and
		// neighbours of the allowed ones: nginx answers them itself.
		for _, path := range []string{
			"/send", "/send/batch", "/online", "/disconnect", "/metrics", "/healthz", "/readyz", "/debug/pprof/",
			"/admin", "/api/v2/send", "/ws/x", "/wss", "/console.js.map", "/index.html", "/%73end", "/console.js/../send",
		} {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				code, body := httpDo(t, method, "http://"+front+path)
				if code != http.StatusNotFound || !strings.Contains(body, "<center>nginx") {
					t.Errorf("%s %s through nginx = %d %q, want nginx's own 404", method, path, code, body)
				}
			}
		}
		// Directly, the public listener has no /send either (-internal-addr).
		if code, _, _ := postSend(http.DefaultClient, "http://"+p.addr, "alice", "x"); code != http.StatusNotFound {
			t.Errorf("/send on the public listener = %d, want 404", code)
		}
	})

	t.Run("console page and its files", func(t *testing.T) {
		code, page := httpDo(t, http.MethodGet, "http://"+front+"/")
		if code != http.StatusOK || !strings.Contains(page, "<html") {
			t.Fatalf("GET / through nginx = %d %q", code, page)
		}
		// The files the page names, and the modules they import, each
		// loaded through nginx as a browser would.
		todo := consoleRefs.FindAllStringSubmatch(page, -1)
		if len(todo) == 0 {
			t.Fatalf("the console page names no file of its own:\n%s", page)
		}
		seen := map[string]bool{}
		for len(todo) > 0 {
			path := "/" + strings.TrimPrefix(strings.TrimPrefix(todo[0][1], "./"), "/")
			todo = todo[1:]
			if seen[path] {
				continue
			}
			seen[path] = true
			code, body := httpDo(t, http.MethodGet, "http://"+front+path)
			if code != http.StatusOK {
				t.Errorf("GET %s through nginx = %d, want 200", path, code)
			}
			if strings.HasSuffix(path, ".js") {
				todo = append(todo, jsImports.FindAllStringSubmatch(body, -1)...)
			}
		}
	})
}

var (
	// consoleRefs are the page's own files: src and href without a scheme.
	consoleRefs = regexp.MustCompile(`(?:src|href)="([^":#?]+)"`)
	// jsImports are a module's static imports and re-exports of relative
	// specifiers.
	jsImports = regexp.MustCompile(`(?m)^\s*(?:import|export)\b[^"'\n]*?(?:from\s*)?["'](\.{1,2}/[^"']+)["']`)
)

// TestNginxClosesIdleWithoutPings shows what the pings are for, and that
// TestNginxWebSocket's idle case can fail: with the server pinging less
// often than proxy_read_timeout, nginx closes an idle connection.
func TestNginxClosesIdleWithoutPings(t *testing.T) {
	const readTimeout = 2 * time.Second
	p := startBinary(t, buildBinary(t), []string{
		"-internal-addr", "127.0.0.1:0", "-message-log", "none", "-allowed-origins", nginxOrigin,
		"-ping-interval", "10s", "-pong-wait", "30s",
	})
	front := startNginx(t, p.addr, internalAddr(t, p), readTimeout).public
	start := time.Now()
	r := readConn(t, dialNginx(t, front, "carol"))
	select {
	case err := <-r.err:
		if took := time.Since(start); took < readTimeout*3/4 {
			t.Errorf("closed after %v, before proxy_read_timeout %v", took, readTimeout)
		}
		var ce *websocket.CloseError
		if !errors.Is(err, io.ErrUnexpectedEOF) && (!errors.As(err, &ce) || ce.Code != websocket.CloseAbnormalClosure) {
			t.Errorf("read: %v, want the connection dropped (1006)", err)
		}
	case msg := <-r.msgs:
		t.Fatalf("unexpected message %q", msg)
	case <-time.After(3 * readTimeout):
		t.Fatalf("nginx kept a connection without traffic open for %v, past proxy_read_timeout %v", 3*readTimeout, readTimeout)
	}
}

// TestNginxKeepsTokensOutOfLogs: with the server unreachable (a restart),
// nginx answers /ws with 502 and logs why, without the token of the
// query string. The same failure on the console page is logged with its
// query string, so the check looks where the token would be.
func TestNginxKeepsTokensOutOfLogs(t *testing.T) {
	down := "127.0.0.1:" + strconv.Itoa(freePort(t)) // nobody listens
	ngx := startNginx(t, down, down, 2*time.Second)
	front, prefix := ngx.public, ngx.prefix
	tok, err := IssueToken(testSecret, "dave", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+front+"/ws?token="+tok, http.Header{"Origin": {nginxOrigin}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("/ws through nginx to a server that is down: %v, %v; want 502", err, resp)
	}
	const probe = "probe-7f3a9c"
	if code, _ := httpDo(t, http.MethodGet, "http://"+front+"/?"+probe); code != http.StatusBadGateway {
		t.Fatalf("GET /?%s through nginx = %d, want 502", probe, code)
	}
	errLog := filepath.Join(prefix, "error.log")
	waitFor(t, "the console's 502 in error.log", func() bool {
		b, err := os.ReadFile(errLog)
		return err == nil && strings.Contains(string(b), probe)
	})
	for _, name := range []string{"error.log", "access.log"} {
		b, err := os.ReadFile(filepath.Join(prefix, name))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.Contains(line, tok) {
				t.Errorf("%s holds the token: %s", name, line)
			}
		}
	}
}

func wantRead(t *testing.T, r *wsReader, want string) {
	t.Helper()
	select {
	case got := <-r.msgs:
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	case err := <-r.err:
		t.Fatalf("read: %v, want %q", err, want)
	case <-time.After(5 * time.Second):
		t.Fatalf("no message %q within 5s", want)
	}
}

// httpDo sends a request without a body and returns the status and body.
func httpDo(t *testing.T, method, u string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}
