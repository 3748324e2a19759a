package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"go-pusher/internal/testutil"
)

// The files in deploy/, each checked by the tool of its ecosystem:
// systemd-analyze for the unit, promtool for the alert rules, the server's
// own /metrics for the names the dashboard and the rules use. nginx is in
// nginx_test.go.

// deployTool is the path of a command a deploy test needs. Without it the
// test skips, except under CI=true, where it fails (make test installs
// them).
func deployTool(t *testing.T, name, pkg string, also ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range also {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testutil.SkipOrFail(t, "no %s: apt-get install %s (make test installs it)", name, pkg)
	return ""
}

// runTool runs a command and returns its combined output and error.
func runTool(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func readDeployFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.FromSlash(path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const unitPath = "deploy/systemd/go-pusher.service"

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

// TestPrometheusRules runs promtool over the alert rules and their unit
// tests, and checks that every alert has a test where it fires and one
// where it stays quiet.
func TestPrometheusRules(t *testing.T) {
	promtool := deployTool(t, "promtool", "prometheus")
	const dir = "deploy/prometheus"
	out, err := runTool(dir, promtool, "check", "rules", "alerts.yml")
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	rules := ruleExprs(t, readDeployFile(t, dir+"/alerts.yml"))
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(rules)); !strings.Contains(out, want) {
		t.Fatalf("promtool check rules found another number of rules than the %d read here:\n%s", len(rules), out)
	}
	if out, err := runTool(dir, promtool, "check", "config", "prometheus.yml"); err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
	if out, err := runTool(dir, promtool, "test", "rules", "alerts_test.yml"); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}

	cases := alertTestCases(readDeployFile(t, dir+"/alerts_test.yml"))
	for _, r := range rules {
		if r.expr == "" {
			t.Errorf("alerts.yml: no expr read for %s", r.name)
		}
		if c := cases[r.name]; !c.fires || !c.quiet {
			t.Errorf("alerts_test.yml: %s has a firing case %v and a quiet case %v, want both", r.name, c.fires, c.quiet)
		}
	}
}

// rule is an alert (or recording) rule of a rules file.
type rule struct{ name, expr string }

// ruleExprs reads the rules of a Prometheus rules file as this repository
// writes them: `- alert: Name` (or record), then `expr:` with a plain
// one-line value or a block scalar (| or >). TestPrometheusRules compares
// the count with promtool's, so a rule written otherwise is noticed.
func ruleExprs(t *testing.T, text string) []rule {
	t.Helper()
	var rules []rule
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		trimmed := strings.TrimSpace(lines[i])
		if name, ok := strings.CutPrefix(trimmed, "- alert:"); ok {
			rules = append(rules, rule{name: strings.TrimSpace(name)})
			continue
		}
		if name, ok := strings.CutPrefix(trimmed, "- record:"); ok {
			rules = append(rules, rule{name: strings.TrimSpace(name)})
			continue
		}
		value, ok := strings.CutPrefix(trimmed, "expr:")
		if !ok {
			continue
		}
		if len(rules) == 0 || rules[len(rules)-1].expr != "" {
			t.Fatalf("line %d: expr: outside a rule", i+1)
		}
		value = strings.TrimSpace(value)
		switch {
		case value == "|" || value == ">" || value == "|-" || value == ">-":
			indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
			var block []string
			for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || len(lines[i+1])-len(strings.TrimLeft(lines[i+1], " ")) > indent) {
				i++
				block = append(block, strings.TrimSpace(lines[i]))
			}
			value = strings.TrimSpace(strings.Join(block, "\n"))
		case value == "" || strings.ContainsAny(value[:1], `"'`) || strings.Contains(value, " #"):
			t.Fatalf("line %d: write expr plain on one line or as a block scalar, not %q", i+1, value)
		}
		rules[len(rules)-1].expr = value
	}
	return rules
}

// alertCases says whether a promtool test file expects an alert to fire
// (exp_alerts with items) and to stay quiet (exp_alerts: []).
type alertCases struct{ fires, quiet bool }

func alertTestCases(text string) map[string]alertCases {
	cases := map[string]alertCases{}
	var name string
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if n, ok := strings.CutPrefix(line, "alertname:"); ok {
			name = strings.TrimSpace(n)
			continue
		}
		if exp, ok := strings.CutPrefix(line, "exp_alerts:"); ok && name != "" {
			c := cases[name]
			if strings.TrimSpace(exp) == "[]" {
				c.quiet = true
			} else {
				c.fires = true
			}
			cases[name] = c
			name = ""
		}
	}
	return cases
}

const dashboardPath = "deploy/grafana/go-pusher.json"

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	SchemaVersion int                      `json:"schemaVersion"`
	UID           string                   `json:"uid"`
	Panels        []dashPanel              `json:"panels"`
	Templating    struct{ List []dashVar } `json:"templating"`
}

type dashPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource *dashDatasource `json:"datasource"`
	Targets    []struct {
		Expr       string          `json:"expr"`
		RefID      string          `json:"refId"`
		Datasource *dashDatasource `json:"datasource"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // a collapsed row's
}

type dashDatasource struct{ Type, UID string }

type dashVar struct {
	Name  string          `json:"name"`
	Type  string          `json:"type"`
	Query json.RawMessage `json:"query"`
}

// dashExpr is a PromQL expression of the dashboard and where it is.
type dashExpr struct{ where, expr string }

// loadDashboard parses the dashboard and returns its expressions: every
// panel target's, and the selector of every label_values() variable.
func loadDashboard(t *testing.T) (dashboard, []dashExpr) {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(readDeployFile(t, dashboardPath)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var exprs []dashExpr
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				exprs = append(exprs, dashExpr{fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %s: query is neither a string nor an object: %s", v.Name, v.Query)
			}
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q.Query)
		}
		exprs = append(exprs, dashExpr{"variable " + v.Name, m[1]})
	}
	return d, exprs
}

// TestGrafanaDashboard checks the dashboard's structure (every panel on
// the datasource variable), that it shows what the issue lists, and that
// promtool accepts every expression as PromQL (Grafana's variables set to
// values).
func TestGrafanaDashboard(t *testing.T) {
	d, exprs := loadDashboard(t)
	if d.SchemaVersion < 36 || d.UID == "" {
		t.Errorf("schemaVersion %d, uid %q: want 36 or later (datasource objects) and a uid", d.SchemaVersion, d.UID)
	}
	hasDS := slices.ContainsFunc(d.Templating.List, func(v dashVar) bool {
		return v.Name == "datasource" && v.Type == "datasource" && string(v.Query) == `"prometheus"`
	})
	if !hasDS {
		t.Error(`no variable "datasource" of type datasource for prometheus`)
	}
	ids := map[int]bool{}
	var check func([]dashPanel)
	check = func(ps []dashPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.Type != "row" && (p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0) {
				t.Errorf("panel %q: datasource %+v, %d targets; want ${datasource} and a query", p.Title, p.Datasource, len(p.Targets))
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if refs[tg.RefID] || tg.Expr == "" || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
					t.Errorf("panel %q target %s: refId used twice, no expr, or datasource %+v", p.Title, tg.RefID, tg.Datasource)
				}
				refs[tg.RefID] = true
			}
			check(p.Panels)
		}
	}
	check(d.Panels)

	shown := map[string]bool{}
	for _, e := range exprs {
		sels, err := promqlSelectors(e.expr)
		if err != nil {
			t.Fatalf("%s: %v", e.where, err)
		}
		for _, s := range sels {
			shown[s.metric] = true
		}
	}
	for _, m := range []string{
		"connections", "pusher_users", "pusher_messages_sent_total", "pusher_messages_failed_total",
		"pusher_send_requests_total", "pusher_send_duration_seconds_bucket", "pusher_delivery_duration_seconds_bucket",
		"pusher_slow_consumers_total", "pusher_auth_failures_total",
		"pusher_mysql_batches_total", "pusher_mysql_failed_batches_total",
		"pusher_redis_published_total", "pusher_redis_received_total", "pusher_redis_reconnects_total",
		"pusher_webhook_events_sent_total", "pusher_webhook_events_retried_total", "pusher_webhook_events_dropped_total",
		"process_resident_memory_bytes", "go_goroutines",
	} {
		if !shown[m] {
			t.Errorf("no panel shows %s", m)
		}
	}

	// promtool parses PromQL with Prometheus's own parser: each expression
	// becomes a recording rule of a generated file (JSON is YAML).
	promtool := deployTool(t, "promtool", "prometheus")
	vars := strings.NewReplacer("$__rate_interval", "1m", "$job", "go-pusher", "$instance", ".*")
	type recording struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var recs []recording
	for i, e := range exprs {
		recs = append(recs, recording{fmt.Sprintf("dashboard:expr_%d", i), vars.Replace(e.expr)})
	}
	b, err := json.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": recs}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runTool("", promtool, "check", "rules", path); err != nil {
		t.Errorf("promtool check rules on the dashboard's expressions: %v\n%s", err, out)
	}
}

// TestDeployMetricsExported checks every metric the dashboard and the
// alert rules read, and the label names they match on, against what a
// real server exports: the built binary with the MySQL log, Redis, a
// webhook and one message sent, so that every vector has its series.
func TestDeployMetricsExported(t *testing.T) {
	db := testutil.NewMySQLDB(t)
	redisURL := testutil.Redis(t)
	recv := startReceiver(t)
	bin := buildBinary(t)
	p := startBinary(t, bin, []string{
		"-internal-addr", "127.0.0.1:0", "-message-log", "mysql", "-redis-prefix", testutil.Prefix(t),
		"-webhook-url", recv.URL,
	}, "PUSHER_MYSQL_DSN="+db.DSN, "PUSHER_REDIS_URL="+redisURL.String(), "PUSHER_WEBHOOK_SECRET="+testWebhookSecret)
	internal := internalAddr(t, p)

	conn := dialProcess(t, p, "alice")
	waitFor(t, "the online event", func() bool { return slices.Contains(recv.got(), "online alice") })
	if code, body, err := postSend(http.DefaultClient, "http://"+internal, "alice", "hello"); code != http.StatusOK {
		t.Fatalf("/send = %d %s %v", code, body, err)
	}
	if got := readText(t, conn); got != "hello" {
		t.Fatalf("got %q, want hello", got)
	}
	series := exportedSeries(t, "http://"+internal+"/metrics")

	_, exprs := loadDashboard(t)
	for _, r := range ruleExprs(t, readDeployFile(t, "deploy/prometheus/alerts.yml")) {
		exprs = append(exprs, dashExpr{"alerts.yml " + r.name, r.expr})
	}
	for _, e := range exprs {
		sels, err := promqlSelectors(e.expr)
		if err != nil {
			t.Fatalf("%s: %v", e.where, err)
		}
		for _, s := range sels {
			labels, ok := series[s.metric]
			if !ok {
				t.Errorf("%s reads %s, which the server does not export", e.where, s.metric)
				continue
			}
			for _, l := range s.labels {
				if !labels[l] {
					t.Errorf("%s matches %s on label %q, which it does not have", e.where, s.metric, l)
				}
			}
		}
	}
}

// internalAddr is the -internal-addr the process p listens on.
func internalAddr(t *testing.T, p *process) string {
	t.Helper()
	m := regexp.MustCompile(`msg=listening .*internal_addr=(\S+)`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no internal_addr in the listening line:\n%s", p.stderr.String())
	}
	return m[1]
}

// exportedSeries scrapes u and returns the name of every series Prometheus
// would store from it (a histogram h as h_bucket, h_sum and h_count) with
// its label names, the target's job and instance included. up is
// Prometheus's own series of every target.
func exportedSeries(t *testing.T, u string) map[string]map[string]bool {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", u, err)
	}
	series := map[string]map[string]bool{"up": {"job": true, "instance": true}}
	add := func(name string, extra ...string) map[string]bool {
		if series[name] == nil {
			series[name] = map[string]bool{"job": true, "instance": true}
		}
		for _, l := range extra {
			series[name][l] = true
		}
		return series[name]
	}
	for name, f := range families {
		var names []string
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			add(name+"_bucket", "le")
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		case dto.MetricType_SUMMARY:
			add(name, "quantile")
			names = []string{name, name + "_sum", name + "_count"}
		default:
			names = []string{name}
		}
		for _, n := range names {
			labels := add(n)
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = true
				}
			}
		}
	}
	return series
}

// promSelector is a metric a PromQL expression reads, with the label
// names its matchers use.
type promSelector struct {
	metric string
	labels []string
}

// promqlKeywords are the words of PromQL that are not metric names:
// operators, modifiers and the aggregations (which may be followed by
// by/without instead of a parenthesis).
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// promqlLabelList is what the parentheses after by, on, ... may hold.
var promqlLabelList = regexp.MustCompile(`^[\s\w,"'.]*$`)

// promqlGrouping are the modifiers followed by a list of label names.
var promqlGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlSelectors returns the metrics expr reads and the label names of
// their matchers. It is a tokenizer, not a parser (adding Prometheus's
// parser would pull the whole prometheus module into go.mod for a test):
// an identifier is a metric name unless it is a keyword, a function (an
// identifier followed by a parenthesis) or in a by/on/... label list;
// strings, [ranges] and Grafana's $variables are skipped. It refuses what
// it cannot answer: a selector without a name, a __name__ regex, an
// unterminated string or bracket. promtool checks the syntax itself
// (TestGrafanaDashboard, TestPrometheusRules).
func promqlSelectors(expr string) ([]promSelector, error) {
	var out []promSelector
	s := expr
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			end, err := promqlStringEnd(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unterminated [ at %d", i)
			}
			i += end + 1
		case c == '$':
			i++
			if i < len(s) && s[i] == '{' {
				end := strings.IndexByte(s[i:], '}')
				if end < 0 {
					return nil, fmt.Errorf("unterminated ${ at %d", i)
				}
				i += end + 1
				break
			}
			for i < len(s) && isPromIdent(s[i], true) {
				i++
			}
		case c == '{':
			sel, end, err := promqlMatchers(s, i, "")
			if err != nil {
				return nil, err
			}
			out, i = append(out, sel), end
		case isPromIdent(c, false):
			start := i
			for i < len(s) && isPromIdent(s[i], true) {
				i++
			}
			word := s[start:i]
			next := i
			for next < len(s) && strings.ContainsRune(" \t\r\n", rune(s[next])) {
				next++
			}
			lower := strings.ToLower(word)
			switch {
			case promqlGrouping[lower]:
				if next < len(s) && s[next] == '(' {
					end := strings.IndexByte(s[next:], ')')
					if end < 0 || !promqlLabelList.MatchString(s[next+1:next+end]) {
						return nil, fmt.Errorf("%s at %d: want a list of label names in parentheses", word, start)
					}
					i = next + end + 1
				}
			case promqlKeywords[lower] || (next < len(s) && s[next] == '('):
				// a keyword, an aggregation or a function
			case next < len(s) && s[next] == '{':
				sel, end, err := promqlMatchers(s, next, word)
				if err != nil {
					return nil, err
				}
				out, i = append(out, sel), end
			default:
				out = append(out, promSelector{metric: word})
			}
		case c >= '0' && c <= '9' || c == '.':
			// a number or a duration: digits, letters, dots
			for i < len(s) && (isPromIdent(s[i], true) || s[i] == '.') {
				i++
			}
		default:
			i++ // an operator, a parenthesis, a comma, @
		}
	}
	return out, nil
}

// promqlMatchers reads the {...} at s[open] of a selector of metric (empty
// for a selector that names it inside the braces) and returns the
// selector and the index after the }.
func promqlMatchers(s string, open int, metric string) (promSelector, int, error) {
	sel := promSelector{metric: metric}
	i := open + 1
	skipSpace := func() {
		for i < len(s) && strings.ContainsRune(" \t\r\n,", rune(s[i])) {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(s) {
			return sel, 0, fmt.Errorf("unterminated { at %d", open)
		}
		if s[i] == '}' {
			break
		}
		var name string
		switch {
		case s[i] == '"' || s[i] == '\'' || s[i] == '`':
			end, err := promqlStringEnd(s, i)
			if err != nil {
				return sel, 0, err
			}
			name, i = s[i+1:end-1], end // names hold no escapes
		case isPromIdent(s[i], false):
			start := i
			for i < len(s) && isPromIdent(s[i], true) {
				i++
			}
			name = s[start:i]
		default:
			return sel, 0, fmt.Errorf("unexpected %q in { at %d", s[i], i)
		}
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
		op := ""
		for i < len(s) && strings.ContainsRune("=!~", rune(s[i])) {
			op += string(s[i])
			i++
		}
		if op == "" { // a quoted metric name alone (Prometheus 3)
			sel.metric = name
			continue
		}
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
		if i >= len(s) || !strings.ContainsRune("\"'`", rune(s[i])) {
			return sel, 0, fmt.Errorf("label %s: value is not a string", name)
		}
		end, err := promqlStringEnd(s, i)
		if err != nil {
			return sel, 0, err
		}
		switch {
		case name == "__name__" && op == "=":
			sel.metric = s[i+1 : end-1]
		case name == "__name__":
			return sel, 0, fmt.Errorf("__name__%s matches names this check cannot list", op)
		default:
			sel.labels = append(sel.labels, name)
		}
		i = end
	}
	if sel.metric == "" {
		return sel, 0, fmt.Errorf("selector at %d has no metric name", open)
	}
	return sel, i + 1, nil
}

// promqlStringEnd returns the index after the string literal at s[start]
// (double, single or back quotes; backslash escapes in the first two).
func promqlStringEnd(s string, start int) (int, error) {
	q := s[start]
	for i := start + 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && q != '`':
			i++
		case s[i] == q:
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at %d", start)
}

func isPromIdent(c byte, inside bool) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || inside && c >= '0' && c <= '9'
}

func TestDeployPromQLSelectors(t *testing.T) {
	tests := []struct {
		expr, want string // want: metric[label,...] space-separated, or "error"
	}{
		{`up{job="go-pusher"} == 0`, "up[job]"},
		{`sum by (le) (rate(h_bucket{job=~"x", le!="+Inf"}[5m]))`, "h_bucket[job,le]"},
		{`sum(rate(a_total[5m])) by (code) / ignoring (code) group_left sum(rate(b_total[5m]))`, "a_total b_total"},
		{`histogram_quantile(0.99, sum without (instance) (rate(h_bucket[$__rate_interval])))`, "h_bucket"},
		{`a / on(instance) group_left(version) b offset 5m`, "a b"},
		{`a unless ignoring (code) b offset -1h30m`, "a b"},
		{`label_replace(up{job="a"}, "dst", "$1", "src", "(.*)")`, "up[job]"},
		{`count_values("le", x) > bool 1e-3`, "x"},
		{`topk(5, x) or vector(0) + time()`, "x"},
		{`x{a="}{\"", b='it\'s', c=~` + "`a|b`" + `}`, "x[a,b,c]"},
		{`{__name__="x", job="y"}`, "x[job]"},
		{`{"utf8.name", job="y"}`, "utf8.name[job]"},
		{`rate(x[5m:30s] @ start()) + y @ 1609746000`, "x y"},
		{`SUM BY (le) (x) AND Inf`, "x"},
		{"# a comment: not_a_metric\ny", "y"},
		{`x{instance=~"$instance"}[${__range}]`, "x[instance]"},
		{`absent_over_time(x[1h]) or on() vector(0x1F)`, "x"},
		{`count (x) > 2 * NaN`, "x"},
		{`{__name__=~"pusher_.*"}`, "error"},
		{`{job="a"}`, "error"},
		{`x{job="a"`, "error"},
		{`x{job=a}`, "error"},
		{`"unterminated`, "error"},
		{`sum by (le (x)`, "error"},
		{`rate(x[5m)`, "error"},
	}
	for _, tt := range tests {
		sels, err := promqlSelectors(tt.expr)
		var got []string
		for _, s := range sels {
			if len(s.labels) == 0 {
				got = append(got, s.metric)
			} else {
				got = append(got, s.metric+"["+strings.Join(s.labels, ",")+"]")
			}
		}
		gotStr := strings.Join(got, " ")
		if err != nil {
			gotStr = "error"
		}
		if gotStr != tt.want {
			t.Errorf("promqlSelectors(%q) = %q (err %v), want %q", tt.expr, gotStr, err, tt.want)
		}
	}
}
