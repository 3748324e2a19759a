package main

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/testutil"
)

// pushes checks that the server at addr takes a WebSocket and delivers a
// /send to it: what "serves" means for the tests of a whole binary.
func pushes(t *testing.T, addr string) {
	t.Helper()
	tok, _ := IssueToken(testSecret, "alice", time.Hour, time.Now())
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?token="+tok, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	waitFor(t, "alice registered", func() bool {
		code, _, _ := postSend(http.DefaultClient, "http://"+addr, "alice", "hello")
		return code == http.StatusOK
	})
	http.DefaultClient.CloseIdleConnections()
	if got := readText(t, conn); got != "hello" {
		t.Fatalf("got %q, want hello", got)
	}
}

// TestStaticBinaryServesInEmptyDirectory: the binary of the container
// image needs nothing from the system it runs on. It has no ELF
// interpreter and no shared library, and it serves with an empty
// environment (no PATH, no HOME, no TZ) plus the two secrets, from an
// empty directory, as on an empty image.
func TestStaticBinaryServesInEmptyDirectory(t *testing.T) {
	bin := buildBinary(t) // CGO_ENABLED=0, as in the image
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary names an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v)", libs, err)
	}

	p := &process{stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, "-addr", "127.0.0.1:0")
	p.cmd.Env = []string{"JWT_SECRET=" + testSecret, "PUSHER_API_KEY=" + testAPIKey}
	p.cmd.Dir = t.TempDir()
	startProcess(t, p)
	pushes(t, p.addr)

	// The image's health check: the same binary, the same environment.
	hc := exec.Command(bin, "healthcheck")
	hc.Env = []string{"PUSHER_ADDR=" + p.addr}
	hc.Dir = p.cmd.Dir
	if out, err := hc.CombinedOutput(); err != nil {
		t.Errorf("healthcheck against a serving server: %v\n%s", err, out)
	}
}

// TestHealthcheckCommand: "go-pusher healthcheck" exits 0 only when the
// server answers 200, asks /readyz with -ready, and finds the listener
// from the server's own environment.
func TestHealthcheckCommand(t *testing.T) {
	ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0"))
	internal := strings.TrimPrefix(ts.opsURL(), "http://")
	run := func(args []string, env map[string]string) error {
		return runHealthcheck(t.Context(), args, testEnv(env), &strings.Builder{})
	}
	if err := run(nil, map[string]string{"PUSHER_INTERNAL_ADDR": internal, "PUSHER_ADDR": "127.0.0.1:1"}); err != nil {
		t.Errorf("healthcheck with PUSHER_INTERNAL_ADDR of a serving server: %v", err)
	}
	if err := run([]string{"-addr", internal, "-ready"}, nil); err != nil {
		t.Errorf("healthcheck -ready of a ready server: %v", err)
	}
	ts.msgLog.setErr(fmt.Errorf("database on fire"))
	waitFor(t, "/readyz 503", func() bool { code, _ := ts.get("/readyz"); return code == http.StatusServiceUnavailable })
	if err := run([]string{"-addr", internal, "-ready"}, nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("healthcheck -ready with the log down = %v, want an error naming 503", err)
	}
	if err := run([]string{"-addr", internal}, nil); err != nil {
		t.Errorf("healthcheck (not -ready) with the log down = %v, want nil: the process serves", err)
	}
	if err := run([]string{"-addr", "127.0.0.1:1"}, nil); err == nil {
		t.Error("healthcheck of a closed port succeeded")
	}
	if err := run([]string{"-addr", "no-port"}, nil); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("healthcheck -addr no-port = %v, want an error naming host:port", err)
	}
}

// containerEngine is podman or docker: the one `make image` uses. Without
// one the image test skips, except under CI=true, where `make test` has
// installed podman and a missing engine is a failure.
func containerEngine(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"podman", "docker"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testutil.SkipOrFail(t, "no container engine: install podman (apt-get install podman runc, or make test)")
	return ""
}

// containerRunFlags are what `podman run` needs on this kind of machine,
// and work elsewhere too. runc instead of crun: crun refuses a host whose
// cgroups are hybrid (v1 hierarchies beside a v2 one with a controller
// left on it). Explicit limits: without CAP_SYS_RESOURCE podman's default
// limits (nofile 1048576, nproc 32768) are above what it may set, and
// crun or runc fails with "setrlimit: Operation not permitted"; these are
// at or below what any engine process has.
func containerRunFlags(engine string) []string {
	if !strings.HasSuffix(engine, "podman") {
		return nil
	}
	flags := []string{"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--health-interval", "disable"}
	if _, err := exec.LookPath("runc"); err == nil {
		flags = append(flags, "--runtime", "runc")
	}
	return flags
}

// TestContainerImage: `make image` builds the image, which runs as a
// non-root user with a health check, and the container serves.
func TestContainerImage(t *testing.T) {
	engine := containerEngine(t)
	image := fmt.Sprintf("localhost/go-pusher:test-%d", os.Getpid())
	if out, err := exec.Command("make", "image", "IMAGE="+image, "CONTAINER="+engine).CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(engine, "rmi", "-f", image).Run() }) // best effort: a leftover image costs only disk

	out, err := exec.Command(engine, "image", "inspect", image).Output()
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	type healthcheck struct{ Test []string }
	var inspected []struct {
		Config struct {
			User         string
			Entrypoint   []string
			ExposedPorts map[string]struct{}
			Healthcheck  *healthcheck // docker's place
		}
		Healthcheck *healthcheck // podman's
	}
	if err := json.Unmarshal(out, &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	cfg := inspected[0].Config
	if cfg.Healthcheck == nil {
		cfg.Healthcheck = inspected[0].Healthcheck
	}
	if cfg.User == "" || cfg.User == "0" || strings.HasPrefix(cfg.User, "root") || strings.HasPrefix(cfg.User, "0:") {
		t.Errorf("the image runs as %q, want a non-root user", cfg.User)
	}
	if _, ok := cfg.ExposedPorts["8181/tcp"]; !ok {
		t.Errorf("exposed ports %v, want 8181/tcp", cfg.ExposedPorts)
	}
	if cfg.Healthcheck == nil || !strings.Contains(strings.Join(cfg.Healthcheck.Test, " "), "/go-pusher healthcheck") {
		t.Errorf("health check %+v, want /go-pusher healthcheck", cfg.Healthcheck)
	}

	args := append([]string{
		"run", "-d", "--rm", "-p", "127.0.0.1::8181",
		"-e", "JWT_SECRET=" + testSecret, "-e", "PUSHER_API_KEY=" + testAPIKey,
	}, containerRunFlags(engine)...)
	out, err = exec.Command(engine, append(args, image)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s run: %v\n%s", engine, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	id := lines[len(lines)-1]
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := exec.Command(engine, "logs", id).CombinedOutput()
			t.Logf("container log:\n%s", logs)
		}
		_ = exec.Command(engine, "rm", "-f", id).Run() // best effort, as above
	})
	out, err = exec.Command(engine, "port", id, "8181/tcp").Output()
	if err != nil {
		t.Fatalf("port: %v", err)
	}
	addr := strings.TrimSpace(strings.Split(string(out), "\n")[0])
	waitFor(t, "the container's /healthz", func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	pushes(t, addr)
	if strings.HasSuffix(engine, "podman") {
		if out, err := exec.Command(engine, "healthcheck", "run", id).CombinedOutput(); err != nil {
			t.Errorf("the image's health check: %v\n%s", err, out)
		}
	}
}

// TestDockerContextHoldsEmbeddedFiles: `docker build .` compiles in the
// image from the context that .dockerignore lets in; every file a package
// embeds (go:embed) must be in it, or the build fails on a machine this
// repository's tests do not run on.
func TestDockerContextHoldsEmbeddedFiles(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.Dir}}|{{join .EmbedFiles "|"}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, _ := os.Getwd()
	ignore, err := os.ReadFile(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		for _, f := range parts[1:] {
			if f == "" {
				continue
			}
			rel, _ := filepath.Rel(root, filepath.Join(parts[0], f))
			files = append(files, filepath.ToSlash(rel))
		}
	}
	if len(files) == 0 {
		t.Fatal("no embedded files found: the console's should be")
	}
	for _, f := range append(files, "go.mod", "main.go", "internal/stream/frame.go") {
		if !dockerContextHas(string(ignore), f) {
			t.Errorf("%s is left out of the build context by .dockerignore", f)
		}
	}
	for _, f := range []string{"main_test.go", ".git/config", "clients/js/node_modules/x.js", "bin/tools/golangci-lint"} {
		if dockerContextHas(string(ignore), f) {
			t.Errorf("%s is in the build context", f)
		}
	}
}

// dockerContextHas reports whether the .dockerignore text lets path into
// the build context: the last pattern that matches it decides, "!"
// letting it in. Only the forms our .dockerignore uses: a name, a
// directory ending in "/", "**/" before a pattern of the last element.
func dockerContextHas(ignore, path string) bool {
	in := true
	for line := range strings.SplitSeq(ignore, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pattern, include := strings.CutPrefix(line, "!")
		var match bool
		switch {
		case strings.HasSuffix(pattern, "/"):
			match = strings.HasPrefix(path, pattern)
		case strings.HasPrefix(pattern, "**/"):
			match, _ = filepath.Match(strings.TrimPrefix(pattern, "**/"), filepath.Base(path))
		default:
			match, _ = filepath.Match(pattern, path)
			if pattern == "*" {
				match = true // the whole context
			}
		}
		if match {
			in = include
		}
	}
	return in
}
