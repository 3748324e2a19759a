package main

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// selfSignedCert writes a certificate for host and its key.
func selfSignedCert(t *testing.T, host string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
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

// nginxFront is a running nginx made from the deploy file.
type nginxFront struct {
	public  string // the public block's address: /ws and the console
	backend string // the backend block's: the API
	prefix  string // its directory, which holds error.log and access.log
}

// startNginx runs nginx from the deploy file in front of a server whose
// -addr is upstream and whose -internal-addr is internal: the same map,
// upstreams and location blocks, each server block listening on a free
// loopback port without TLS, the backend block's allow-list with
// 127.0.0.1 added, and the /ws location's proxy_read_timeout set to
// readTimeout.
func startNginx(t *testing.T, upstream, internal string, readTimeout time.Duration) nginxFront {
	t.Helper()
	nginx := nginxPath(t)
	public := "127.0.0.1:" + strconv.Itoa(freePort(t))
	backend := "127.0.0.1:" + strconv.Itoa(freePort(t))
	site := readDeployFile(t, nginxConfPath)
	site = replaceOnce(t, site, "server 127.0.0.1:8181;", "server "+upstream+";")
	site = replaceOnce(t, site, "listen 443 ssl;", "listen "+public+";")
	site = replaceOnce(t, site, "    ssl_certificate     /etc/ssl/push.example.com/fullchain.pem;\n", "")
	site = replaceOnce(t, site, "    ssl_certificate_key /etc/ssl/push.example.com/privkey.pem;\n", "")
	site = replaceOnce(t, site, "proxy_read_timeout 75s;", "proxy_read_timeout "+strconv.Itoa(int(readTimeout.Milliseconds()))+"ms;")
	site = replaceOnce(t, site, "server 127.0.0.1:8182;", "server "+internal+";")
	site = replaceOnce(t, site, backendListen, "listen "+backend+";")
	site = replaceOnce(t, site, "    ssl_certificate     /etc/ssl/push-api.example.com/fullchain.pem;\n", "")
	site = replaceOnce(t, site, "    ssl_certificate_key /etc/ssl/push-api.example.com/privkey.pem;\n", "")
	site = replaceOnce(t, site, "    deny all;\n", "    allow 127.0.0.1;\n    deny all;\n")
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
	waitFor(t, "nginx listening", func() bool {
		select {
		case err := <-exited:
			exited <- err
			errLog, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			t.Fatalf("nginx exited: %v\n%s%s", err, out.String(), errLog)
		default:
		}
		for _, addr := range []string{public, backend} {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})
	return nginxFront{public: public, backend: backend, prefix: prefix}
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

// apiCall is one request to the backend API, made the same way through
// nginx and directly.
type apiCall struct {
	name        string
	method      string // POST unless set
	path        string
	contentType string
	body        string
	header      http.Header       // besides Authorization: Bearer testAPIKey, which it may replace
	status      int               // the answer's, wanted on both ways
	deliver     map[string]string // uid → the message its WebSocket then reads
	anyBody     bool              // the body is not compared (/metrics: the counters moved)
}

// apiAnswer is what a backend sees of an answer: the status, the headers
// the server sets, and the body with message ids (new on each send) made
// equal.
type apiAnswer struct {
	status int
	header string
	body   string
	raw    string // the body as it came
}

var (
	// apiHeaders are the answer headers a backend reads: the media type,
	// the challenge of a 401, the Allow of a 405, a replay's mark.
	apiHeaders = []string{"Content-Type", "X-Content-Type-Options", "WWW-Authenticate", "Allow", "Idempotent-Replayed"}
	messageIDs = regexp.MustCompile(`"id":"[^"]*"`)
)

func doAPI(t *testing.T, client *http.Client, base string, c apiCall) apiAnswer {
	t.Helper()
	method := cmp.Or(c.method, http.MethodPost)
	req, err := http.NewRequest(method, base+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	maps.Copy(req.Header, c.header)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	var h strings.Builder
	for _, name := range apiHeaders {
		fmt.Fprintf(&h, "%s: %q\n", name, resp.Header.Values(name))
	}
	a := apiAnswer{status: resp.StatusCode, header: h.String(), raw: string(body)}
	if !c.anyBody {
		a.body = messageIDs.ReplaceAllString(string(body), `"id":"…"`)
	}
	return a
}

// backendCalls are the requests each way makes, in order, with alice and
// bob connected. way names the way: idempotency keys are its own.
func backendCalls(cfg Config, way string) []apiCall {
	const form, js = "application/x-www-form-urlencoded", "application/json"
	key := http.Header{"Idempotency-Key": {"order-" + way}}
	return []apiCall{
		{
			name: "unicast", path: "/send", contentType: form, body: "uid=alice&message=hello",
			status: http.StatusOK, deliver: map[string]string{"alice": "hello"},
		},
		{name: "offline uid", path: "/send", contentType: form, body: "uid=nobody&message=hello", status: http.StatusNotFound},
		{
			name: "wrong key", path: "/send", contentType: form, body: "uid=alice&message=hello",
			header: http.Header{"Authorization": {"Bearer wrong-key"}}, status: http.StatusUnauthorized,
		},
		{
			name: "no key", path: "/send", contentType: form, body: "uid=alice&message=hello",
			header: http.Header{"Authorization": nil}, status: http.StatusUnauthorized,
		},
		{name: "bad uid", path: "/send", contentType: js, body: `{"uid":"a\u0001b","message":"hello"}`, status: http.StatusBadRequest},
		{
			name: "oversized message", path: "/send", contentType: form,
			body:   "uid=alice&message=" + strings.Repeat("x", cfg.MaxMessageSize+1),
			status: http.StatusRequestEntityTooLarge,
		},
		{name: "GET /send", method: http.MethodGet, path: "/send?uid=alice&message=hello", status: http.StatusMethodNotAllowed},
		{
			name: "multicast", path: "/send", contentType: js, body: `{"uids":["alice","nobody","bob"],"message":"all"}`,
			status: http.StatusOK, deliver: map[string]string{"alice": "all", "bob": "all"},
		},
		{name: "query string", path: "/send?uid=bob&message=q", status: http.StatusOK, deliver: map[string]string{"bob": "q"}},
		{
			name: "key", path: "/send", contentType: js, body: `{"uid":"alice","message":"paid"}`, header: key,
			status: http.StatusOK, deliver: map[string]string{"alice": "paid"},
		},
		{
			name: "key retried", path: "/send", contentType: js, body: `{"uid":"alice","message":"paid"}`, header: key,
			status: http.StatusOK, // replayed: nothing sent
		},
		{
			name: "key reused", path: "/send", contentType: js, body: `{"uid":"alice","message":"refunded"}`, header: key,
			status: http.StatusUnprocessableEntity,
		},
		{
			name: "key twice", path: "/send", contentType: js, body: `{"uid":"alice","message":"twice"}`,
			header: http.Header{"Idempotency-Key": {"k1-" + way, "k2-" + way}}, status: http.StatusBadRequest,
		},
		{
			name: "batch", path: "/send/batch", contentType: js,
			body:   `{"messages":[{"uid":"alice","message":"a"},{"uids":["bob","nobody"],"message":"b"},{"uid":"nobody","message":"c"}]}`,
			status: http.StatusOK, deliver: map[string]string{"alice": "a", "bob": "b"},
		},
		{
			name: "largest batch", path: "/send/batch", contentType: js, body: largestBatch(cfg),
			status: http.StatusOK, deliver: map[string]string{"bob": "big"},
		},
		{name: "online", path: "/online", contentType: js, body: `{"uids":["alice","nobody"]}`, status: http.StatusOK},
		{name: "disconnect", path: "/disconnect", contentType: js, body: `{"uids":["nobody"]}`, status: http.StatusOK},
		{name: "healthz", method: http.MethodGet, path: "/healthz", status: http.StatusOK},
		{name: "readyz", method: http.MethodGet, path: "/readyz", status: http.StatusOK},
		{name: "metrics", method: http.MethodGet, path: "/metrics", status: http.StatusOK, anyBody: true},
	}
}

// largestBatch is a /send/batch body of exactly -max-batch-bytes: "big"
// to bob, then messages of -max-message-size to an offline uid.
func largestBatch(cfg Config) string {
	var b strings.Builder
	b.WriteString(`{"messages":[{"uid":"bob","message":"big"}`)
	filler := `,{"uid":"nobody","message":"` + strings.Repeat("x", cfg.MaxMessageSize) + `"}`
	for int64(b.Len()+len(filler)+len("]}")) <= cfg.MaxBatchBytes {
		b.WriteString(filler)
	}
	b.WriteString("]")
	b.WriteString(strings.Repeat(" ", int(cfg.MaxBatchBytes)-b.Len()-1))
	b.WriteString("}")
	return b.String()
}

// TestNginxBackendAPI: the deploy file's backend block in front of the
// server's -internal-addr answers the API as the internal listener
// itself does. The same requests go through nginx, then directly; their
// status, the headers the server sets and the body (message ids aside)
// must be the same, and each message reaches its WebSockets once.
func TestNginxBackendAPI(t *testing.T) {
	p := startBinary(t, buildBinary(t), []string{
		"-internal-addr", "127.0.0.1:0", "-message-log", "none", "-allowed-origins", nginxOrigin,
	})
	internal := internalAddr(t, p)
	// nginx reaches the server through a counter of its connections.
	hop, upstreamConns := countingProxy(t, internal)
	ngx := startNginx(t, p.addr, hop, time.Minute)
	cfg := testConfig(t)
	if n := len(largestBatch(cfg)); int64(n) != cfg.MaxBatchBytes {
		t.Fatalf("largestBatch is %d bytes, want %d", n, cfg.MaxBatchBytes)
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	sockets := map[string]*wsReader{
		"alice": readConn(t, dialNginx(t, ngx.public, "alice")),
		"bob":   readConn(t, dialNginx(t, ngx.public, "bob")),
	}

	ways := []struct{ name, base string }{
		{"nginx", "http://" + ngx.backend},
		{"direct", "http://" + internal},
	}
	answers := map[string][]apiAnswer{}
	for _, way := range ways {
		calls := backendCalls(cfg, way.name)
		for _, c := range calls {
			a := doAPI(t, client, way.base, c)
			answers[way.name] = append(answers[way.name], a)
			if a.status != c.status {
				t.Errorf("%s %s: %d %.200q, want %d", way.name, c.name, a.status, a.raw, c.status)
				continue // nothing to read; the last message below finds any stray
			}
			for uid, msg := range c.deliver {
				wantRead(t, sockets[uid], msg)
			}
		}
		// The retried key was answered as the first time, marked, and sent
		// nothing: a last message is the next each socket reads.
		first, again := answers[way.name][slices.IndexFunc(calls, func(c apiCall) bool { return c.name == "key" })],
			answers[way.name][slices.IndexFunc(calls, func(c apiCall) bool { return c.name == "key retried" })]
		if again.raw != first.raw || !strings.Contains(again.header, `Idempotent-Replayed: ["true"]`) || strings.Contains(first.header, `Idempotent-Replayed: ["true"]`) {
			t.Errorf("%s: retried key answered %q\n%s, first %q\n%s: want the same body, marked Idempotent-Replayed: true", way.name, again.raw, again.header, first.raw, first.header)
		}
		for uid, r := range sockets {
			a := doAPI(t, client, way.base, apiCall{name: "last", path: "/send", contentType: "application/x-www-form-urlencoded", body: "uid=" + uid + "&message=last"})
			if a.status != http.StatusOK {
				t.Fatalf("%s: last message to %s = %d %q", way.name, uid, a.status, a.raw)
			}
			wantRead(t, r, "last")
		}
	}
	for i, c := range backendCalls(cfg, "") {
		n, d := answers["nginx"][i], answers["direct"][i]
		if n.status != d.status || n.header != d.header || n.body != d.body {
			t.Errorf("%s through nginx:\n%d\n%s%.300q\ndirect:\n%d\n%s%.300q", c.name, n.status, n.header, n.body, d.status, d.header, d.body)
		}
	}

	t.Run("keep-alive to the server", func(t *testing.T) {
		before := upstreamConns.Load()
		for range 20 {
			if a := doAPI(t, client, "http://"+ngx.backend, apiCall{name: "healthz", method: http.MethodGet, path: "/healthz"}); a.status != http.StatusOK {
				t.Fatalf("/healthz through nginx = %d %q", a.status, a.raw)
			}
		}
		if n := upstreamConns.Load() - before; n > 1 {
			t.Errorf("20 requests through nginx opened %d connections to the server, want at most 1 (keepalive)", n)
		}
	})

	t.Run("only the API on the backend block", func(t *testing.T) {
		for _, path := range []string{"/", "/ws", "/console.js", "/debug/pprof/", "/admin", "/sendx", "/send/", "/send/batch/x", "/api/send"} {
			code, body := httpDo(t, http.MethodPost, "http://"+ngx.backend+path)
			if code != http.StatusNotFound || !strings.Contains(body, "<center>nginx") {
				t.Errorf("POST %s through the backend block = %d %q, want nginx's own 404", path, code, body)
			}
		}
		// The public block still has no /send.
		code, body := httpDo(t, http.MethodPost, "http://"+ngx.public+"/send?uid=alice&message=x")
		if code != http.StatusNotFound || !strings.Contains(body, "<center>nginx") {
			t.Errorf("/send through the public block = %d %q, want nginx's own 404", code, body)
		}
	})

	t.Run("other networks denied", func(t *testing.T) {
		// 127.0.0.2: loopback too, but not in the allow-list.
		other := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext,
		}}
		defer other.CloseIdleConnections()
		a := doAPI(t, other, "http://"+ngx.backend, apiCall{name: "denied", path: "/send?uid=alice&message=denied"})
		if a.status != http.StatusForbidden || !strings.Contains(a.raw, "<center>nginx") {
			t.Errorf("/send from 127.0.0.2 = %d %q, want nginx's own 403", a.status, a.raw)
		}
		if a := doAPI(t, client, "http://"+internal, apiCall{name: "after", path: "/send?uid=alice&message=after"}); a.status != http.StatusOK {
			t.Fatalf("/send direct = %d %q", a.status, a.raw)
		}
		wantRead(t, sockets["alice"], "after") // the denied message never went out
	})
}

// countingProxy forwards the TCP connections it accepts to target and
// counts them; it stops when the test ends.
func countingProxy(t *testing.T, target string) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		accepted atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		open     = map[net.Conn]bool{}
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			open[c] = true
		} else {
			delete(open, c)
		}
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			accepted.Add(1)
			wg.Go(func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				track(c, true)
				track(up, true)
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done // either side closed: close both
				c.Close()
				up.Close()
				<-done
				track(c, false)
				track(up, false)
			})
		}
	})
	return l.Addr().String(), &accepted
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
