package main

// deploy/systemd/go-pusher.service, checked by systemd-analyze.

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go-pusher/internal/testutil"
)

// unitFile is a systemd unit file: section → key → values in order (a key
// may be given more than once).
type unitFile map[string]map[string][]string

func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasSuffix(line, `\`):
			return nil, fmt.Errorf("line %d: continuation lines are not supported here", i+1)
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: %q is not key=value in a section", i+1, line)
			}
			u[section][key] = append(u[section][key], value)
		}
	}
	return u, nil
}

// TestSystemdUnit checks the unit's settings against the server (its
// ExecStart parses as a valid configuration, TimeoutStopSec is above the
// drain), the hardening the issue asks for, that systemd-analyze verify
// prints nothing about it, and its exposure score.
func TestSystemdUnit(t *testing.T) {
	analyze := deployTool(t, "systemd-analyze", "systemd")
	text := readDeployFile(t, unitPath)
	unit, err := parseUnit(text)
	if err != nil {
		t.Fatalf("parse %s: %v", unitPath, err)
	}
	svc := unit["Service"]
	for key, want := range map[string]string{
		"Type": "exec", "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
		"LimitNOFILE": "1048576", "Restart": "on-failure", "KillSignal": "SIGTERM",
		"EnvironmentFile": "/etc/go-pusher/env",
	} {
		if got := svc[key]; len(got) != 1 || got[0] != want {
			t.Errorf("[Service] %s = %q, want exactly %q", key, got, want)
		}
	}
	if !slices.Contains(svc["SystemCallFilter"], "@system-service") {
		t.Errorf("[Service] SystemCallFilter = %q, want @system-service among them", svc["SystemCallFilter"])
	}

	for _, key := range []string{"ExecStart", "TimeoutStopSec"} {
		if len(svc[key]) != 1 {
			t.Fatalf("[Service] %s = %q, want one", key, svc[key])
		}
	}
	// ExecStart is what the server would parse, with the secrets of the
	// environment file filled in.
	execStart := strings.Fields(svc["ExecStart"][0])
	if execStart[0] != "/usr/local/bin/go-pusher" {
		t.Errorf("ExecStart runs %s, want /usr/local/bin/go-pusher", execStart[0])
	}
	env := unitEnv(t)
	cfg, err := parseConfig(execStart[1:], func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("ExecStart %q with env.example: %v", execStart[1:], err)
	}
	if cfg.InternalAddr == "" {
		t.Error("ExecStart has no -internal-addr: /send and /metrics would be on the public listener")
	}
	stop, err := time.ParseDuration(svc["TimeoutStopSec"][0])
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v (write it as a Go duration, 30s)", err)
	}
	if stop <= cfg.ShutdownTimeout {
		t.Errorf("TimeoutStopSec %v is not above -shutdown-timeout %v: systemd would SIGKILL a drain", stop, cfg.ShutdownTimeout)
	}
	checkStartLimit(t, unit)

	// verify checks that ExecStart's binary exists: a copy runs a built
	// one, and differs from the committed file in that path only.
	bin := buildBinary(t)
	const execLine = "\nExecStart=/usr/local/bin/go-pusher "
	if n := strings.Count(text, execLine); n != 1 {
		t.Fatalf("%q occurs %d times, want once", execLine, n)
	}
	copyText := strings.Replace(text, execLine, "\nExecStart="+bin+" ", 1)
	copyPath := writeUnit(t, copyText)
	if out := verifyUnit(t, analyze, copyPath); out != "" {
		t.Errorf("systemd-analyze verify %s:\n%s", unitPath, out)
	}
	// The check has teeth: a misspelt key and a bad value are reported.
	broken := strings.Replace(strings.Replace(copyText, "\nNoNewPrivileges=", "\nNoNewPrivilege=", 1), "ProtectSystem=strict", "ProtectSystem=strictly", 1)
	if out := verifyUnit(t, analyze, writeUnit(t, broken)); !strings.Contains(out, "NoNewPrivilege") || !strings.Contains(out, "strictly") {
		t.Errorf("systemd-analyze verify missed a misspelt key and a bad value:\n%s", out)
	}

	if help, _ := runTool("", analyze, "security", "--help"); !strings.Contains(help, "--offline") {
		testutil.SkipOrFail(t, "this systemd-analyze has no security --offline (systemd 250 or later)")
	}
	out, err := runTool("", analyze, "security", "--offline=true", copyPath)
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for go-pusher\.service: (\d+\.\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no exposure level:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64) // the pattern admits only numbers
	// What is left is what a network server needs (sockets, the host's
	// network) and /proc beyond its own files (see the unit's comment).
	const maxExposure = 2.0
	t.Logf("systemd-analyze security: exposure %.1f (at most %.1f)", score, maxExposure)
	if score > maxExposure {
		t.Errorf("exposure level %.1f, want at most %.1f:\n%s", score, maxExposure, out)
	}
}

// checkStartLimit checks that Restart= never runs into the start limit: a
// server that keeps failing to start (a dependency not up yet) is
// restarted every RestartSec, and systemd stops for good once more than
// StartLimitBurst starts fall within StartLimitIntervalSec.
func checkStartLimit(t *testing.T, unit unitFile) {
	t.Helper()
	setting := func(section, key, def string) string {
		if v := unit[section][key]; len(v) > 0 {
			return v[len(v)-1]
		}
		return def
	}
	duration := func(key, value string) time.Duration {
		d, err := time.ParseDuration(value)
		if err != nil {
			t.Fatalf("%s: %v (write it as a Go duration, 5s)", key, err)
		}
		return d
	}
	// systemd's defaults: RestartSec=100ms, DefaultStartLimitIntervalSec=10s,
	// DefaultStartLimitBurst=5.
	restart := duration("RestartSec", setting("Service", "RestartSec", "100ms"))
	interval := duration("StartLimitIntervalSec", setting("Unit", "StartLimitIntervalSec", "10s"))
	burst, err := strconv.Atoi(setting("Unit", "StartLimitBurst", "5"))
	if err != nil {
		t.Fatalf("StartLimitBurst: %v", err)
	}
	if interval == 0 {
		return // no start limit
	}
	if restart <= 0 {
		t.Fatalf("RestartSec %v: want a pause between restarts", restart)
	}
	if starts := int(interval/restart) + 1; starts > burst {
		t.Errorf("RestartSec %v: %d starts within StartLimitIntervalSec %v, more than StartLimitBurst %d: a server that cannot start yet ends in start-limit-hit", restart, starts, interval, burst)
	}
}

// unitEnv reads deploy/systemd/env.example: every name in it, set or
// commented out, is one the server reads, and the secrets are filled in.
func unitEnv(t *testing.T) map[string]string {
	t.Helper()
	known := map[string]bool{"JWT_SECRET": true, "PUSHER_API_KEY": true, "PUSHER_MYSQL_DSN": true, "PUSHER_REDIS_URL": true, "PUSHER_WEBHOOK_SECRET": true}
	var cfg Config
	var origins string
	newFlagSet(&cfg, &origins).VisitAll(func(f *flag.Flag) { known[envName(f.Name)] = true })
	env := map[string]string{}
	for line := range strings.SplitSeq(readDeployFile(t, "deploy/systemd/env.example"), "\n") {
		set := !strings.HasPrefix(line, "#")
		name, value, ok := strings.Cut(strings.TrimPrefix(line, "#"), "=")
		if !ok || strings.Contains(name, " ") {
			continue // a comment or a blank line
		}
		if !known[name] {
			t.Errorf("env.example names %s, which the server does not read", name)
		}
		if set {
			env[name] = value
		}
	}
	if env["JWT_SECRET"] != "" || env["PUSHER_API_KEY"] != "" {
		t.Error("env.example holds a secret: they must be made per installation")
	}
	env["JWT_SECRET"], env["PUSHER_API_KEY"] = testSecret, testAPIKey
	return env
}

func writeUnit(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "go-pusher.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// verifyUnit runs systemd-analyze verify and returns what it printed about
// the unit. Lines about other units of this machine (verify loads the
// targets the unit names) are only logged.
func verifyUnit(t *testing.T, analyze, path string) string {
	t.Helper()
	out, err := runTool("", analyze, "verify", "--man=no", path)
	var ours []string
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		switch {
		case line == "":
		case strings.Contains(line, "go-pusher") || strings.Contains(line, path):
			ours = append(ours, line)
		default:
			t.Logf("systemd-analyze verify, not about the unit: %s", line)
		}
	}
	if err != nil && len(ours) == 0 {
		ours = append(ours, "exit: "+err.Error())
	}
	return strings.Join(ours, "\n")
}
