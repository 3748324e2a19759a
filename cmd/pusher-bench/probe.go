package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is sysconf(_SC_CLK_TCK), the unit of utime and stime in
// /proc/PID/stat. It is 100 on every Linux the tool runs on (the kernel's
// USER_HZ); reading it would need cgo.
const clockTicks = 100

// serverState is what the probe reads of the server at one moment.
type serverState struct {
	Connections   float64 `json:"connections"`
	Pending       float64 `json:"pending"`
	Users         float64 `json:"users"`
	Goroutines    float64 `json:"goroutines"`
	RSS           int64   `json:"rss_bytes"`
	HeapInuse     float64 `json:"heap_inuse_bytes"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	Sent          float64 `json:"messages_sent"`
	Failed        float64 `json:"messages_failed"`
	SlowConsumers float64 `json:"slow_consumers"`
}

// metricNames are the series the probe reads that differ by server;
// "" is a series the server does not have (its figure stays 0). The Go
// runtime's and the process's series are the Prometheus client's, the
// same in both.
type metricNames struct {
	server                      string // the product, for the error when the gauge is missing
	connections, pending, users string
	sent, failed, slowConsumers string
}

// metricsOf returns the series of the target's server: go-pusher's, or
// Centrifugo's (prometheus.enabled). Centrifugo refreshes its gauges
// every 10 s, not at each connect (see connect), and has no queue gauge:
// drain then waits for the deliveries alone.
func metricsOf(target string) metricNames {
	if target == targetCentrifugo {
		return metricNames{
			server: "Centrifugo with prometheus.enabled", connections: "centrifugo_node_num_clients", users: "centrifugo_node_num_users",
		}
	}
	return metricNames{
		server: "go-pusher", connections: "connections", pending: "pending", users: "pusher_users",
		sent: "pusher_messages_sent_total", failed: "pusher_messages_failed_total", slowConsumers: "pusher_slow_consumers_total",
	}
}

// probe reads the server's /metrics and, when the pid is known, its
// /proc entries. With several nodes (a cluster) it adds up what each
// node reports.
type probe struct {
	urls   []string
	names  metricNames
	pids   []int
	client *http.Client
}

func newProbe(metricsURLs []string, names metricNames, pids []int, timeout time.Duration) *probe {
	return &probe{
		urls:  metricsURLs,
		names: names,
		pids:  pids,
		// Its own keep-alive connection per node, so that a leak check
		// counts the same server goroutines before and after.
		client: &http.Client{Timeout: timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 1}},
	}
}

func (p *probe) close() { p.client.CloseIdleConnections() }

// read returns the server's state now: the sum over its nodes.
func (p *probe) read(ctx context.Context) (serverState, error) {
	var st serverState
	for _, u := range p.urls {
		m, err := p.scrape(ctx, u)
		if err != nil {
			return serverState{}, err
		}
		n := &p.names
		// A missing key ("" included) reads 0.
		st.Connections += m[n.connections]
		st.Pending += m[n.pending]
		st.Users += m[n.users] // a uid on two nodes counts twice: fine for a baseline
		st.Goroutines += m["go_goroutines"]
		st.RSS += int64(m["process_resident_memory_bytes"])
		st.HeapInuse += m["go_memstats_heap_inuse_bytes"]
		st.CPUSeconds += m["process_cpu_seconds_total"]
		st.Sent += m[n.sent]
		st.Failed += m[n.failed]
		st.SlowConsumers += m[n.slowConsumers]
	}
	if len(p.pids) > 0 {
		st.RSS, st.CPUSeconds = 0, 0
		for _, pid := range p.pids {
			rss, err := procRSS(pid)
			if err != nil {
				return st, err
			}
			cpu, err := procCPU(pid)
			if err != nil {
				return st, err
			}
			st.RSS += rss
			st.CPUSeconds += cpu
		}
	}
	return st, nil
}

// scrape reads the /metrics at url into series → value. A labelled
// series is also summed under its bare name, which is what the probe
// reads.
func (p *probe) scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics request: %w", err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	_ = resp.Body.Close() // read above: closing has nothing to add to err
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read %s: %s", url, resp.Status)
	}
	m, err := parseMetrics(body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	if _, ok := m[p.names.connections]; !ok {
		return nil, fmt.Errorf("%s has no %s gauge: is it a %s?", url, p.names.connections, p.names.server)
	}
	return m, nil
}

// parseMetrics reads the Prometheus text format, which is all promhttp
// serves to a client that asks for nothing else. It is hand-written
// rather than expfmt's so that the tool adds no direct dependency, and
// it needs only "name{labels} value" lines: promhttp writes no timestamps.
func parseMetrics(body []byte) (map[string]float64, error) {
	m := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		series := strings.TrimSpace(line[:i])
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("malformed value in %q: %w", line, err)
		}
		m[series] = v
		if j := strings.IndexByte(series, '{'); j > 0 {
			m[series[:j]] += v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// procRSS returns VmRSS of pid, in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("server RSS: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("server RSS: %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("server RSS: no VmRSS line in /proc/%d/status", pid)
}

// procCPU returns the user and system CPU time of pid, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("server CPU: %w", err)
	}
	return parseStat(b)
}

// parseStat reads utime and stime (fields 14 and 15) of a /proc/PID/stat.
// The command name (field 2) is in parentheses and may hold spaces, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed /proc stat: %w", err)
		}
		ticks += n
	}
	return float64(ticks) / clockTicks, nil
}

// cpuClock is the tool's and the whole machine's CPU time at one moment.
type cpuClock struct{ tool, machine float64 }

func readCPUClock() cpuClock { return cpuClock{tool: selfCPU(), machine: machineCPU()} }

// machineCPU returns the busy CPU time of the whole machine (all cores:
// user, nice, system, irq, softirq, steal) from /proc/stat, or 0.
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return float64(ticks) / clockTicks
}

// selfCPU returns the tool's own CPU time, to tell whether the tool rather
// than the server was the limit (they share the machine).
func selfCPU() float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0 // not Linux: the report leaves the figure out
	}
	s, err := parseStat(b)
	if err != nil {
		return 0
	}
	return s
}

// loadAverage returns the machine's 1-minute load average, or 0 where
// /proc/loadavg does not exist.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return v
}
