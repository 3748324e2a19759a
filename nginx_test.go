package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// deploy/nginx/go-pusher.conf is checked three ways: docs/operations.md
// shows it as it is; `nginx -t` accepts it; and a real nginx built from it
// carries WebSockets to the built server.

const nginxConfPath = "deploy/nginx/go-pusher.conf"

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

// nginxMainConf is an nginx.conf that includes site, with every file
// nginx writes under prefix, in the foreground.
func nginxMainConf(prefix, site string) string {
	user := ""
	if os.Geteuid() == 0 {
		// Workers would run as nobody, who cannot enter the test's
		// temporary directory (proxy buffers spill there).
		user = "user root;\n"
	}
	return user + strings.NewReplacer("PREFIX", prefix, "SITE", site).Replace(`daemon off;
worker_processes 1;
pid PREFIX/nginx.pid;
error_log PREFIX/error.log info;
events {
    worker_connections 64;
}
http {
    access_log PREFIX/access.log;
    client_body_temp_path PREFIX/client_body;
    proxy_temp_path PREFIX/proxy;
    fastcgi_temp_path PREFIX/fastcgi;
    uwsgi_temp_path PREFIX/uwsgi;
    scgi_temp_path PREFIX/scgi;
    include SITE;
}
`)
}

// wsErrorLog is the /ws location's error_log in the deploy file: the
// tests point it at the prefix's error.log, the main error_log's file.
const wsErrorLog = "error_log /var/log/nginx/error.log crit;"

// writeNginx writes site and an nginx.conf that includes it into a new
// prefix directory, runs `nginx -t` on them and returns the prefix and
// the nginx.conf path. Site's wsErrorLog is moved into the prefix.
func writeNginx(t *testing.T, nginx, site string) (prefix, conf string) {
	t.Helper()
	prefix = t.TempDir()
	site = replaceOnce(t, site, wsErrorLog, "error_log "+filepath.Join(prefix, "error.log")+" crit;")
	sitePath := filepath.Join(prefix, "go-pusher.conf")
	conf = filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(sitePath, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(nginxMainConf(prefix, sitePath)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runTool("", nginx, "-t", "-p", prefix, "-c", conf, "-e", filepath.Join(prefix, "error.log"))
	if err != nil || !strings.Contains(out, "test is successful") {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	return prefix, conf
}

// TestNginxDeployConfig runs `nginx -t` on the committed file, its
// certificate paths pointed at a self-signed certificate made here and
// the /ws error log into the test's directory (the only changes), and
// checks its WebSocket timeout against the server's default ping
// interval.
func TestNginxDeployConfig(t *testing.T) {
	nginx := nginxPath(t)
	conf := readDeployFile(t, nginxConfPath)
	cert, key := selfSignedCert(t)
	conf = replaceOnce(t, conf, "/etc/ssl/push.example.com/fullchain.pem;", cert+";")
	conf = replaceOnce(t, conf, "/etc/ssl/push.example.com/privkey.pem;", key+";")
	writeNginx(t, nginx, conf)

	m := regexp.MustCompile(`proxy_read_timeout (\d+)s;`).FindStringSubmatch(conf)
	if m == nil {
		t.Fatal("no proxy_read_timeout in seconds")
	}
	secs, _ := strconv.Atoi(m[1]) // the pattern admits only digits
	if ping := testConfig(t).PingInterval; time.Duration(secs)*time.Second <= 2*ping {
		t.Errorf("proxy_read_timeout %ds is not above twice the default -ping-interval %v: one lost ping would close connections", secs, ping)
	}
}

// selfSignedCert writes a certificate for push.example.com and its key.
func selfSignedCert(t *testing.T) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "push.example.com"},
		DNSNames:     []string{"push.example.com"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// startNginx runs nginx from the deploy file in front of upstream: the
// same map and location blocks, listening on a free loopback port without
// TLS, with proxy_read_timeout set to readTimeout. It returns the
// address nginx listens on and its prefix directory, which holds
// error.log and access.log.
func startNginx(t *testing.T, upstream string, readTimeout time.Duration) (addr, prefix string) {
	t.Helper()
	nginx := nginxPath(t)
	port := freePort(t)
	site := readDeployFile(t, nginxConfPath)
	site = replaceOnce(t, site, "server 127.0.0.1:8181;", "server "+upstream+";")
	site = replaceOnce(t, site, "listen 443 ssl;", "listen 127.0.0.1:"+strconv.Itoa(port)+";")
	site = replaceOnce(t, site, "    ssl_certificate     /etc/ssl/push.example.com/fullchain.pem;\n", "")
	site = replaceOnce(t, site, "    ssl_certificate_key /etc/ssl/push.example.com/privkey.pem;\n", "")
	site = replaceOnce(t, site, "proxy_read_timeout 75s;", "proxy_read_timeout "+strconv.Itoa(int(readTimeout.Milliseconds()))+"ms;")
	prefix, conf := writeNginx(t, nginx, site)

	cmd := exec.Command(nginx, "-p", prefix, "-c", conf, "-e", filepath.Join(prefix, "error.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its workers are in its group
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		// SIGTERM: the master stops its workers and exits.
		_ = cmd.Process.Signal(syscall.SIGTERM) // fails only if it has exited; exited answers either way
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the group this test started
			<-exited
			t.Errorf("nginx did not stop on SIGTERM")
		}
	})
	addr = "127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, "nginx listening", func() bool {
		select {
		case err := <-exited:
			exited <- err
			errLog, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			t.Fatalf("nginx exited: %v\n%s%s", err, out.String(), errLog)
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return addr, prefix
}

// freePort is a loopback TCP port nobody listened on a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// wsReader reads a connection on a goroutine of its own, as a browser
// does, so that the server's pings are answered while the test waits.
type wsReader struct {
	msgs chan string
	err  chan error
	conn *websocket.Conn
	stop chan struct{} // closed by close: the goroutine gives up a send
	done chan struct{} // closed when the goroutine has returned
}

// readConn starts a wsReader on conn, closed when the test ends.
func readConn(t *testing.T, conn *websocket.Conn) *wsReader {
	r := startReader(conn)
	t.Cleanup(r.close)
	return r
}

func startReader(conn *websocket.Conn) *wsReader {
	r := &wsReader{
		msgs: make(chan string, 16), err: make(chan error, 1), conn: conn,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go func() {
		defer close(r.done)
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				r.err <- err // the only send: the buffer holds it
				return
			}
			select {
			case r.msgs <- string(msg):
			case <-r.stop: // messages the test did not read fill r.msgs
				return
			}
		}
	}()
	return r
}

// close closes the connection and waits for the goroutine, which may be
// blocked on a full r.msgs.
func (r *wsReader) close() {
	close(r.stop)
	r.conn.Close()
	<-r.done
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

// wsSender is a connection to a WebSocket server that sends n messages
// and then waits for the client to close.
func wsSender(t *testing.T, n int) *websocket.Conn {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade answered the client
		}
		defer c.Close()
		for i := range n {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))); err != nil {
				return
			}
		}
		_, _, _ = c.ReadMessage() // returns when the client closes
	}))
	t.Cleanup(srv.Close)
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn
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
	front, _ := startNginx(t, p.addr, readTimeout)

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
	front, _ := startNginx(t, p.addr, readTimeout)
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
	front, prefix := startNginx(t, down, 2*time.Second)
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
