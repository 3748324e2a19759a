package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"go-pusher/internal/testutil"
)

// TestMetricsEndpoint: /metrics is text exposition that promtool's linter
// accepts, with the article's gauges, the pusher_ metrics of the contract
// and the Go and process collectors.
func TestMetricsEndpoint(t *testing.T) {
	ts := startServer(t, testConfig(t))
	conn := ts.dial("u")
	ts.sendOK("u", "counted")
	readText(t, conn)
	waitFor(t, "sent counted", func() bool { return testutil.Counter(t, ts.metrics.sent) == 1 })

	code, body := ts.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		// The article's gauge names predate the naming conventions; the
		// contract keeps them.
		if p.Metric == "connections" || p.Metric == "pending" {
			continue
		}
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	want := map[string]dto.MetricType{
		"connections":                       dto.MetricType_GAUGE,
		"pending":                           dto.MetricType_GAUGE,
		"pusher_users":                      dto.MetricType_GAUGE,
		"pusher_messages_sent_total":        dto.MetricType_COUNTER,
		"pusher_messages_failed_total":      dto.MetricType_COUNTER,
		"pusher_send_requests_total":        dto.MetricType_COUNTER,
		"pusher_auth_failures_total":        dto.MetricType_COUNTER,
		"pusher_slow_consumers_total":       dto.MetricType_COUNTER,
		"pusher_memory_trims_total":         dto.MetricType_COUNTER,
		"pusher_memory_trimmed_bytes_total": dto.MetricType_COUNTER,
		"pusher_send_duration_seconds":      dto.MetricType_HISTOGRAM,
		"pusher_delivery_duration_seconds":  dto.MetricType_HISTOGRAM,
		"go_goroutines":                     dto.MetricType_GAUGE,
		"process_resident_memory_bytes":     dto.MetricType_GAUGE,
	}
	for name, typ := range want {
		f, ok := families[name]
		if !ok {
			t.Errorf("/metrics lacks %s", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
		}
	}
	gauge := func(name string) float64 { return families[name].GetMetric()[0].GetGauge().GetValue() }
	if gauge("connections") != 1 || gauge("pusher_users") != 1 || gauge("pending") != 0 {
		t.Errorf("connections %v, pusher_users %v, pending %v; want 1, 1, 0",
			gauge("connections"), gauge("pusher_users"), gauge("pending"))
	}
	if got := families["pusher_messages_sent_total"].GetMetric()[0].GetCounter().GetValue(); got != 1 {
		t.Errorf("pusher_messages_sent_total = %v, want 1", got)
	}
	if got := families["pusher_delivery_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("pusher_delivery_duration_seconds count = %v, want 1", got)
	}
	var reasons []string
	for _, m := range families["pusher_messages_failed_total"].GetMetric() {
		reasons = append(reasons, m.GetLabel()[0].GetValue())
	}
	if fmt.Sprint(reasons) != "[closed slow_consumer write_error]" {
		t.Errorf("pusher_messages_failed_total reasons = %v", reasons)
	}
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	off := startServer(t, testConfig(t))
	if code, _ := off.get("/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without -pprof = %d, want 404", code)
	}
	on := startServer(t, testConfig(t, "-pprof", "-internal-addr", "127.0.0.1:0"))
	if code, _ := on.get("/debug/pprof/"); code != http.StatusOK {
		t.Errorf("/debug/pprof/ with -pprof = %d, want 200", code)
	}
	resp, err := on.client.Get("http://" + on.Addr() + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("public /debug/pprof/ with -internal-addr = %d, want 404", resp.StatusCode)
	}
}
