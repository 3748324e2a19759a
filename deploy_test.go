package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"go-pusher/internal/testutil"
)

// The files in deploy/, each checked by the tool of its ecosystem:
// promtool for the alert rules and the dashboard's PromQL, the server's
// own /metrics for the names the dashboard and the rules use. The systemd
// unit is in systemd_test.go, nginx in nginx_test.go, the PromQL
// tokenizer in promql_test.go.

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
	type recording struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var recs []recording
	for i, e := range exprs {
		recs = append(recs, recording{fmt.Sprintf("dashboard:expr_%d", i), dashboardVars.Replace(e.expr)})
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

// dashboardVars sets Grafana's variables in an expression of the dashboard
// to values, for promtool: all instances of job go-pusher.
var dashboardVars = strings.NewReplacer("$__rate_interval", "1m", "$job", "go-pusher", "$instance", ".*")

// TestGrafanaReadyPanel evaluates the "Ready" stat's query with promtool
// over three servers: a ready one, one that answers 503, and one that
// went down (its series go stale, up turns 0). Each must be one series
// labelled job and instance only, the down one 0: the stat shows each
// series' last value, so a down server that only lost its pusher_ready
// series would still show its last 1.
func TestGrafanaReadyPanel(t *testing.T) {
	d, _ := loadDashboard(t)
	var expr string
	for _, p := range d.Panels {
		if p.Title == "Ready" && len(p.Targets) == 1 {
			expr = dashboardVars.Replace(p.Targets[0].Expr)
		}
	}
	if expr == "" {
		t.Fatal(`no panel "Ready" with one query`)
	}
	promtool := deployTool(t, "promtool", "prometheus")
	type sample struct {
		Labels string  `json:"labels"`
		Value  float64 `json:"value"`
	}
	series := func(name, instance, values string) map[string]string {
		return map[string]string{"series": fmt.Sprintf(`%s{job="go-pusher", instance=%q}`, name, instance), "values": values}
	}
	want := func(instance string, v float64) sample {
		return sample{fmt.Sprintf(`{job="go-pusher", instance=%q}`, instance), v}
	}
	test := map[string]any{
		"rule_files":          []string{"empty.yml"},
		"evaluation_interval": "1m",
		"tests": []any{map[string]any{
			"interval": "1m",
			"input_series": []any{
				series("up", "ready:8182", "1x10"),
				series("pusher_ready", "ready:8182", "1x10"),
				series("up", "not-ready:8182", "1x10"),
				series("pusher_ready", "not-ready:8182", "1 1 1 0x7"),
				series("up", "down:8182", "1 1 1 0x7"),
				series("pusher_ready", "down:8182", "1 1 1 stale"),
				// Another job's target: not on the dashboard.
				map[string]string{"series": `up{job="node", instance="db:9100"}`, "values": "0x10"},
			},
			"promql_expr_test": []any{map[string]any{
				"expr":        expr,
				"eval_time":   "5m",
				"exp_samples": []sample{want("ready:8182", 1), want("not-ready:8182", 0), want("down:8182", 0)},
			}},
		}},
	}
	dir := t.TempDir()
	b, err := json.Marshal(test) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string][]byte{"empty.yml": []byte("groups: []\n"), "ready_test.yml": b} {
		if err := os.WriteFile(filepath.Join(dir, name), text, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := runTool(dir, promtool, "test", "rules", "ready_test.yml"); err != nil {
		t.Errorf("the Ready panel's query %s: %v\n%s", expr, err, out)
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
