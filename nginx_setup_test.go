package main

// A real nginx for the tests, made from deploy/nginx/go-pusher.conf, and
// the WebSocket helpers that go through it.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

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
