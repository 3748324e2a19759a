package main

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"go-pusher/internal/idempotency"
)

// The reason labels of pusher_messages_failed_total.
const (
	failSlowConsumer = "slow_consumer"
	failWriteError   = "write_error"
	failClosed       = "closed"
)

// metrics are the server's Prometheus metrics, on a registry of its own
// (the subsystems register theirs on it too). Counters on the delivery
// path are bound once so that counting a message is one atomic add.
type metrics struct {
	reg *prometheus.Registry

	sent             prometheus.Counter
	failedSlow       prometheus.Counter
	failedWrite      prometheus.Counter
	failedClosed     prometheus.Counter
	sendRequests     *prometheus.CounterVec
	sendOK           prometheus.Counter // sendRequests{code="200"}, looked up once
	authFailures     *prometheus.CounterVec
	slowConsumers    prometheus.Counter
	disconnects      prometheus.Counter
	recoveries       *prometheus.CounterVec
	sendDuration     prometheus.Histogram
	deliveryDuration prometheus.Histogram
	batchRequests    *prometheus.CounterVec
	batchItems       prometheus.Counter
	replays          prometheus.Counter
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	failed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pusher_messages_failed_total",
		Help: "Messages not written to a socket, by reason.",
	}, []string{"reason"})
	m := &metrics{
		reg: reg,
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_messages_sent_total",
			Help: "Messages written to a socket.",
		}),
		failedSlow:   failed.WithLabelValues(failSlowConsumer),
		failedWrite:  failed.WithLabelValues(failWriteError),
		failedClosed: failed.WithLabelValues(failClosed),
		sendRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_send_requests_total",
			Help: "/send requests by HTTP status.",
		}, []string{"code"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_auth_failures_total",
			Help: "Refused /ws handshakes, by reason.",
		}, []string{"reason"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_slow_consumers_total",
			Help: "Connections closed with 1013 because their queue was full.",
		}),
		disconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_disconnects_total",
			Help: "Connections closed with 1008 by POST /disconnect (on this node).",
		}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_recoveries_total",
			Help: "Reconnections with ?since=, by result: recovered (replayed without a gap) or failed ({\"recovered\": false}).",
		}, []string{"result"}),
		sendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pusher_send_duration_seconds",
			Help:    "/send handling time.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		deliveryDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pusher_delivery_duration_seconds",
			Help:    "Time from /send accepting a message to writing it to a socket.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		batchRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_batch_requests_total",
			Help: "/send/batch requests by HTTP status.",
		}, []string{"code"}),
		batchItems: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_batch_items_total",
			Help: "Messages of /send/batch requests answered 200, whatever each item's own result.",
		}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_idempotent_replays_total",
			Help: "Messages not sent again because their idempotency key was answered before (/send and /send/batch items).",
		}),
	}
	for _, r := range authReasons {
		m.authFailures.WithLabelValues(r)
	}
	for _, code := range []int{200, 400, 401, 404, 405, 409, 413, 415, 422, 503} {
		m.sendRequests.WithLabelValues(strconv.Itoa(code))
	}
	for _, code := range []int{200, 400, 401, 405, 413, 415, 503} {
		m.batchRequests.WithLabelValues(strconv.Itoa(code))
	}
	for _, r := range []string{"recovered", "failed"} {
		m.recoveries.WithLabelValues(r)
	}
	m.sendOK = m.sendRequests.WithLabelValues("200")
	reg.MustRegister(
		m.sent, failed, m.sendRequests, m.authFailures, m.slowConsumers, m.disconnects, m.recoveries,
		m.sendDuration, m.deliveryDuration, m.batchRequests, m.batchItems, m.replays,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// gauges reads the live state the gauges report.
type gauges interface {
	Connections() int
	Users() int
	Pending() int64
}

// registerGauges adds the gauges that read g: the article's connections
// and pending, and pusher_users.
func (m *metrics) registerGauges(g gauges) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "connections",
			Help: "Open registered WebSocket connections (the article's gauge).",
		}, func() float64 { return float64(g.Connections()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pending",
			Help: "Messages queued on connections and not yet written (the article's gauge).",
		}, func() float64 { return float64(g.Pending()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_users",
			Help: "Distinct uids with at least one open connection.",
		}, func() float64 { return float64(g.Users()) }),
	)
}

// registerReady adds pusher_ready: 1 when /readyz would answer 200, so
// that an alert rule sees what a load balancer sees. ready answers from
// the readiness cache, so a scrape costs no more than a /readyz.
func (m *metrics) registerReady(ready func() bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_ready",
		Help: "1 when every configured dependency answers and the server is not shutting down (what /readyz answers 200 to), else 0.",
	}, func() float64 {
		if ready() {
			return 1
		}
		return 0
	}))
}

// registerIdempotency adds the gauges and counter of a single node's
// idempotency keys.
func (m *metrics) registerIdempotency(mem *idempotency.Memory) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_idempotency_keys",
			Help: "Idempotency keys remembered or in flight on this node.",
		}, func() float64 { keys, _, _ := mem.Stats(); return float64(keys) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pusher_idempotency_bytes",
			Help: "Approximate bytes of the remembered idempotency keys (bounded by -idempotency-bytes).",
		}, func() float64 { _, b, _ := mem.Stats(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "pusher_idempotency_evictions_total",
			Help: "Idempotency keys forgotten before -idempotency-ttl to stay within -idempotency-bytes.",
		}, func() float64 { _, _, e := mem.Stats(); return float64(e) }),
	)
}

// recovered counts a since= reconnection.
func (m *metrics) recovered(ok bool) {
	result := "recovered"
	if !ok {
		result = "failed"
	}
	m.recoveries.WithLabelValues(result).Inc()
}

// sendCounter returns the counter of /send requests answered with code.
func (m *metrics) sendCounter(code int) prometheus.Counter {
	if code == http.StatusOK {
		return m.sendOK
	}
	return m.sendRequests.WithLabelValues(strconv.Itoa(code))
}

// batchCounter returns the counter of /send/batch requests answered with
// code.
func (m *metrics) batchCounter(code int) prometheus.Counter {
	return m.batchRequests.WithLabelValues(strconv.Itoa(code))
}

// failedCounter returns the counter of a failure reason.
func (m *metrics) failedCounter(reason string) prometheus.Counter {
	switch reason {
	case failSlowConsumer:
		return m.failedSlow
	case failWriteError:
		return m.failedWrite
	}
	return m.failedClosed
}
