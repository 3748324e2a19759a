package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"go-pusher/internal/testutil"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// goroutine the server starts has an owner that stops it.
// redisCluster is the Redis Cluster this package's tests share.
var redisCluster testutil.SharedRedisCluster

// withRedisCluster stops the shared Redis Cluster once the tests ran,
// before goleak looks for goroutines left.
type withRedisCluster struct{ m *testing.M }

func (w withRedisCluster) Run() int {
	defer redisCluster.Stop()
	defer built.remove()
	return w.m.Run()
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(withRedisCluster{m},
		// fasthttp's, not ours: one goroutine per process refreshes the
		// Date header for good, and a stopped worker pool's cleaner
		// notices the stop only after its sleep (MaxIdleWorkerDuration).
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}

func TestRunVersionNeedsNoSecrets(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "go-pusher ") {
		t.Errorf("-version printed %q", out.String())
	}
}

func TestRunHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Usage: go-pusher", "-send-buffer", "token -uid"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRunTokenCommand(t *testing.T) {
	var out bytes.Buffer
	env := testEnv(nil)
	if err := run(context.Background(), []string{"token", "-uid", "alice", "-ttl", "2h"}, env, &out, &out); err != nil {
		t.Fatal(err)
	}
	id, err := NewJWTAuthenticator(testSecret, time.Now).ParseToken(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("printed token does not verify: %v", err)
	}
	if id.UID != "alice" || time.Until(id.ExpiresAt) < 119*time.Minute || time.Until(id.ExpiresAt) > 121*time.Minute {
		t.Errorf("token identity = %+v, want alice expiring in 2h", id)
	}
	out.Reset()
	if err := run(context.Background(), []string{"token", "-uid", "bob", "-ttl", "0"}, env, &out, &out); err != nil {
		t.Fatal(err)
	}
	if id, err := NewJWTAuthenticator(testSecret, time.Now).ParseToken(strings.TrimSpace(out.String())); err != nil || !id.ExpiresAt.IsZero() {
		t.Errorf("-ttl 0 token = %+v, %v; want no expiry", id, err)
	}
	for _, iat := range []struct {
		flag string
		want time.Time
	}{
		{"2h", time.Now().Add(-2 * time.Hour)},
		{"2026-01-02T03:04:05Z", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
	} {
		out.Reset()
		if err := run(context.Background(), []string{"token", "-uid", "carol", "-iat", iat.flag}, env, &out, &out); err != nil {
			t.Fatal(err)
		}
		id, err := NewJWTAuthenticator(testSecret, time.Now).ParseToken(strings.TrimSpace(out.String()))
		if d := id.IssuedAt.Sub(iat.want); err != nil || d < -2*time.Second || d > 2*time.Second {
			t.Errorf("-iat %s: iat %s, %v; want %s", iat.flag, id.IssuedAt, err, iat.want)
		}
	}
	for _, tt := range []struct {
		args []string
		env  func(string) string
		want string
	}{
		{[]string{"token"}, env, "-uid is required"},
		{[]string{"token", "-uid", "a", "-ttl", "-1h"}, env, "invalid -ttl"},
		{[]string{"token", "-uid", "a", "-iat", "yesterday"}, env, "invalid -iat"},
		{[]string{"token", "-uid", "a"}, func(string) string { return "" }, "JWT_SECRET is required"},
		{[]string{"token", "-uid", strings.Repeat("a", 129)}, env, "uid is longer than 128 bytes"},
	} {
		err := run(context.Background(), tt.args, tt.env, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error naming %q", tt.args, err, tt.want)
		}
	}
}

func TestRunPortInUse(t *testing.T) {
	ts := startServer(t, testConfig(t))
	env := testEnv(nil)
	err := run(context.Background(), []string{"-addr", ts.Addr(), "-message-log", "none"}, env, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "-addr "+ts.Addr()) {
		t.Fatalf("run on a used port = %v, want an error naming -addr", err)
	}
}

func TestRunServesUntilContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-log-format", "json"}, testEnv(nil), &bytes.Buffer{}, &stderr)
	}()
	waitFor(t, "listening log line", func() bool { return strings.Contains(stderr.String(), `"msg":"listening"`) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run() = %v, want nil after the context ends", err)
	}
	if strings.Contains(stderr.String(), testSecret) || strings.Contains(stderr.String(), testAPIKey) {
		t.Errorf("logs contain a secret:\n%s", stderr.String())
	}
}

// TestRunWarnsOfExposure: a server that works but is exposed says so at
// start, after it listens: /send and /metrics on the public listener, a
// short API key.
func TestRunWarnsOfExposure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0"}, testEnv(map[string]string{"PUSHER_API_KEY": "short"}), &bytes.Buffer{}, &stderr)
	}()
	waitFor(t, "listening log line", func() bool { return strings.Contains(stderr.String(), "msg=listening") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PUSHER_API_KEY is shorter than 32 bytes", "/send and /metrics are served on the public listener"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, stderr.String())
		}
	}
	var quiet syncBuffer
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-internal-addr", "127.0.0.1:0"}, testEnv(map[string]string{"PUSHER_API_KEY": strings.Repeat("k", 32)}), &bytes.Buffer{}, &quiet)
	}()
	waitFor(t, "listening log line", func() bool { return strings.Contains(quiet.String(), "msg=listening") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(quiet.String(), "level=WARN") {
		t.Errorf("a server with -internal-addr and a long key warns:\n%s", quiet.String())
	}
}

// built is the go-pusher binary of the tests that run the whole program,
// built once for them all and removed after them (TestMain).
var built builtBinary

// builtBinary is go-pusher built as the container image has it
// (CGO_ENABLED=0), in a directory of its own.
type builtBinary struct {
	once sync.Once
	dir  string
	err  error
}

// buildBinary returns the path of the go-pusher binary, building it on
// first use.
func buildBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		// Not t.TempDir: the binary outlives the test that builds it.
		built.dir, built.err = os.MkdirTemp("", "go-pusher-test-") //nolint:usetesting // see above
		if built.err != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(built.dir, "go-pusher"), ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return filepath.Join(built.dir, "go-pusher")
}

func (b *builtBinary) remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir) // a temp dir left behind costs only disk
	}
}

// process is a running go-pusher binary.
type process struct {
	cmd            *exec.Cmd
	addr           string
	stdout, stderr *syncBuffer
	exited         chan error
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

func startBinary(t *testing.T, bin string, args []string, env ...string) *process {
	t.Helper()
	p := &process{stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	p.cmd.Env = append([]string{"JWT_SECRET=" + testSecret, "PUSHER_API_KEY=" + testAPIKey, "PATH=" + os.Getenv("PATH")}, env...)
	startProcess(t, p)
	return p
}

// startProcess starts p.cmd, stops it when the test ends, and waits for
// the address it listens on.
func startProcess(t *testing.T, p *process) {
	t.Helper()
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	// Killed with the test binary too, should a timeout skip the cleanup.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill() // fails only if it has exited already; exited answers either way
			<-p.exited
		}
	})
	waitFor(t, "listening line on stderr", func() bool {
		m := listeningRE.FindStringSubmatch(p.stderr.String())
		if m != nil {
			p.addr = m[1]
		}
		return m != nil
	})
}

// wait returns the exit error, failing the test after 15 s.
func (p *process) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.exited:
		return err
	case <-time.After(15 * time.Second):
		t.Fatalf("process did not exit; stderr:\n%s", p.stderr.String())
		return nil
	}
}

func TestBinarySignalDrainsAndExitsZero(t *testing.T) {
	bin := buildBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startBinary(t, bin, nil)
			tok, err := IssueToken(testSecret, "alice", time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			conn, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/ws?token="+tok, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			waitFor(t, "alice connected", func() bool {
				code, _, _ := postSend(http.DefaultClient, "http://"+p.addr, "alice", "hello")
				return code == http.StatusOK
			})
			if got := readText(t, conn); got != "hello" {
				t.Fatalf("got %q", got)
			}
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			wantClose(t, conn, websocket.CloseGoingAway, "server shutting down")
			if err := p.wait(t); err != nil {
				t.Fatalf("exit after %v: %v, want 0; stderr:\n%s", sig, err, p.stderr.String())
			}
			if !regexp.MustCompile(`send message: \{"id":"[0-9a-v]{20}","uid":"alice","message":"hello"\}\n`).MatchString(p.stdout.String()) {
				t.Errorf("stdout lacks the article's log line:\n%s", p.stdout.String())
			}
			if strings.Contains(p.stderr.String(), testSecret) || strings.Contains(p.stderr.String(), tok) {
				t.Errorf("stderr contains a secret or a token:\n%s", p.stderr.String())
			}
			http.DefaultClient.CloseIdleConnections()
		})
	}
}

// TestBinaryBadSettingExitsNonZero: a bad setting exits non-zero at once
// with one line that names it.
func TestBinaryBadSettingExitsNonZero(t *testing.T) {
	bin := buildBinary(t)
	busy := startBinary(t, bin, nil)
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"unparsable duration", []string{"-ping-interval", "abc"}, nil, "-ping-interval"},
		{"unparsable env duration", nil, []string{"PUSHER_WRITE_TIMEOUT=abc"}, "PUSHER_WRITE_TIMEOUT"},
		{"unknown message log", []string{"-message-log", "kafka"}, nil, "-message-log"},
		{"mysql without DSN", []string{"-message-log", "mysql"}, nil, "PUSHER_MYSQL_DSN"},
		{"port in use", []string{"-addr", busy.addr}, nil, "-addr"},
		{"no JWT secret", nil, []string{"JWT_SECRET="}, "JWT_SECRET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tt.args...)
			cmd.Env = append([]string{"JWT_SECRET=" + testSecret, "PUSHER_API_KEY=" + testAPIKey}, tt.env...)
			var stderr syncBuffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("run %q: %v, want a non-zero exit", tt.args, err)
			}
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tt.want) {
				t.Fatalf("stderr = %q, want one line naming %s", stderr.String(), tt.want)
			}
		})
	}
}

func TestBinaryVersionAndToken(t *testing.T) {
	bin := buildBinary(t)
	out, err := exec.Command(bin, "-version").Output()
	if err != nil || !strings.HasPrefix(string(out), "go-pusher ") {
		t.Fatalf("-version = %q, %v", out, err)
	}
	cmd := exec.Command(bin, "token", "-uid", "carol")
	cmd.Env = []string{"JWT_SECRET=" + testSecret}
	out, err = cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if id, err := NewJWTAuthenticator(testSecret, time.Now).ParseToken(strings.TrimSpace(string(out))); err != nil || id.UID != "carol" {
		t.Fatalf("token output %q: %+v, %v", out, id, err)
	}
}

// TestMakeRunPrintsWorkingLines: what scripts/run-dev.sh (make run) prints
// works as printed: the token connects, and the curl line's request pushes
// "hello" to it.
func TestMakeRunPrintsWorkingLines(t *testing.T) {
	bin := buildBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var out syncBuffer
	cmd := exec.Command("scripts/run-dev.sh", bin)
	cmd.Env = append(os.Environ(), "PUSHER_ADDR="+addr, "JWT_SECRET=", "PUSHER_API_KEY=")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // fails only if it has exited already; exited answers either way
		<-exited
	})
	var token, key string
	tokenRE := regexp.MustCompile(`new WebSocket\("ws://[^/]+/ws\?token=([^"]+)"\)`)
	curlRE := regexp.MustCompile(`curl -H "Authorization: Bearer ([^"]+)" -d uid=alice -d message=hello http://localhost:\d+/send`)
	waitFor(t, "the printed lines and the listener", func() bool {
		m1, m2 := tokenRE.FindStringSubmatch(out.String()), curlRE.FindStringSubmatch(out.String())
		if m1 == nil || m2 == nil || !strings.Contains(out.String(), "msg=listening") {
			return false
		}
		token, key = m1[1], m2[1]
		return true
	})
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?token="+token, nil)
	if err != nil {
		t.Fatalf("the printed token does not connect: %v\n%s", err, out.String())
	}
	defer conn.Close()
	// The curl line: a form POST with the printed key.
	waitFor(t, "alice registered", func() bool {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/send", strings.NewReader("uid=alice&message=hello"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	http.DefaultClient.CloseIdleConnections()
	if got := readText(t, conn); got != "hello" {
		t.Fatalf("got %q, want hello", got)
	}
}

// dialProcess connects uid to the server process p, until the test ends.
func dialProcess(t *testing.T, p *process, uid string) *websocket.Conn {
	t.Helper()
	tok, _ := IssueToken(testSecret, uid, time.Hour, time.Now())
	c, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/ws?token="+tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
