// Package webhook sends presence events to the backend's webhook URL:
// JSON arrays of at most BatchMax events, gathered for at most
// BatchWait, signed with HMAC-SHA256 over "<timestamp>.<body>", retried
// with backoff for Retry and then dropped (and counted). Events wait in a
// bounded queue: a slow or dead receiver never slows whoever sends them
// (past the bound they are dropped and counted).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Event is one presence transition.
type Event struct {
	Event string `json:"event"` // "online" or "offline"
	UID   string `json:"uid"`
	Time  string `json:"time"` // RFC 3339 with milliseconds, UTC
	// Seq numbers the uid's events from 1 where several senders share
	// them (Config.Order); 0: not numbered.
	Seq int64 `json:"-"`
}

// Order keeps each uid's events in order when several senders (the nodes
// of a cluster) send them: event Seq of a uid waits until its event
// Seq-1 was delivered, or given up, by whichever sender had it.
type Order interface {
	// Delivered returns the number of each uid's last event delivered
	// or given up (0: none).
	Delivered(ctx context.Context, uids []string) (map[string]int64, error)
	// MarkDelivered records that event seqs[i] of uids[i] was delivered
	// or given up.
	MarkDelivered(ctx context.Context, uids []string, seqs []int64) error
}

// TimeFormat is an Event's Time: RFC 3339 with milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Config is what a Sender needs to know.
type Config struct {
	URL    string
	Secret string
	// Retry is how long a batch is retried before it is dropped.
	Retry time.Duration
	// Timeout bounds one POST.
	Timeout time.Duration
	// QueueSize bounds the events waiting; BatchMax and BatchWait shape
	// a batch.
	QueueSize int
	BatchMax  int
	BatchWait time.Duration
	// Order, when set, holds a numbered event back until the one before
	// it went out, for at most Retry + Timeout + 2 BatchWait (past that,
	// the sender that had it is taken for dead).
	Order Order
}

// Sender posts events to a webhook.
//
// Goroutines: the sender, started by Start and stopped by Close.
type Sender struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	queue  chan Event
	held   []heldEvent // owned by the sender goroutine: events waiting for the one before them

	ctx    context.Context
	cancel context.CancelFunc
	// flushing ends when Close begins: deliver what is queued, then end.
	flushing   context.Context
	startFlush context.CancelFunc
	done       chan struct{}
	closeOnce  sync.Once

	sent, retried, dropped prometheus.Counter
	heldGauge              prometheus.Gauge
}

// New makes a Sender; Start runs it.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) *Sender {
	s := &Sender{
		cfg: cfg, log: log,
		client: &http.Client{},
		queue:  make(chan Event, cfg.QueueSize),
		done:   make(chan struct{}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_webhook_events_sent_total", Help: "Presence events the webhook receiver acknowledged with a 2xx.",
		}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_webhook_events_retried_total", Help: "Presence events sent again after a failed delivery (one per event and retry).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_webhook_events_dropped_total", Help: "Presence events given up: retried for -webhook-retry, or the queue was full.",
		}),
	}
	s.heldGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pusher_webhook_events_held", Help: "Presence events waiting for their uid's previous event, sent by another node, to be delivered (cluster mode).",
	})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.flushing, s.startFlush = context.WithCancel(context.Background())
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_webhook_events_queued", Help: "Presence events waiting in the webhook queue (bounded; past it events are dropped).",
	}, func() float64 { return float64(len(s.queue)) })
	reg.MustRegister(s.sent, s.retried, s.dropped, s.heldGauge, queued)
	return s
}

// Start runs the sender until Close.
func (s *Sender) Start() { go s.loop() }

// Close delivers what is queued, each batch tried once (a POST bounded
// by 2 s), and stops the sender; what it could not deliver, or by ctx's
// end, is dropped and counted.
func (s *Sender) Close(ctx context.Context) {
	s.closeOnce.Do(func() {
		stop := context.AfterFunc(ctx, s.cancel)
		defer stop()
		s.startFlush()
		<-s.done
		s.dropped.Add(float64(len(s.queue)))
		s.cancel()
	})
}

// Send queues e. It never blocks: with the queue full, e is dropped.
func (s *Sender) Send(e Event) {
	select {
	case s.queue <- e:
	default:
		s.dropped.Inc()
	}
}

// heldEvent is an event waiting for its uid's previous one; since is when
// it began to wait.
type heldEvent struct {
	Event
	since time.Time
}

// heldRecheck is how often held events are checked again.
const heldRecheck = 250 * time.Millisecond

func (s *Sender) loop() {
	defer close(s.done)
	recheck := time.NewTicker(heldRecheck)
	defer recheck.Stop()
	batch := make([]Event, 0, s.cfg.BatchMax)
	for {
		var held <-chan time.Time
		if len(s.held) > 0 {
			held = recheck.C
		}
		select {
		case <-s.ctx.Done():
			s.dropped.Add(float64(len(s.held)))
			return
		case <-s.flushing.Done():
			s.flush()
			return
		case e := <-s.queue:
			batch = append(batch[:0], e)
		case <-held:
			s.send(nil)
			continue
		}
		t := time.NewTimer(s.cfg.BatchWait)
	gather:
		for len(batch) < s.cfg.BatchMax {
			select {
			case e := <-s.queue:
				batch = append(batch, e)
			case <-t.C:
				break gather
			case <-s.flushing.Done():
				break gather // delivered now; the rest next
			case <-s.ctx.Done():
				t.Stop()
				s.dropped.Add(float64(len(batch) + len(s.held)))
				return
			}
		}
		t.Stop()
		s.send(batch)
	}
}

// send delivers batch and the held events whose turn came, in batches of
// at most BatchMax, and holds back the others.
func (s *Sender) send(batch []Event) {
	ready := s.inOrder(batch)
	for len(ready) > 0 {
		n := min(len(ready), s.cfg.BatchMax)
		s.deliver(ready[:n])
		ready = ready[n:]
	}
}

// inOrder returns the held events and those of batch that may go now, in
// order, and keeps the rest held: with Order, a numbered event goes once
// its uid's previous event was delivered or goes in the same POST before
// it, or once it has waited holdMax.
func (s *Sender) inOrder(batch []Event) []Event {
	if s.cfg.Order == nil {
		return batch
	}
	now := time.Now()
	cands := make([]heldEvent, 0, len(s.held)+len(batch))
	cands = append(cands, s.held...)
	for _, e := range batch {
		cands = append(cands, heldEvent{e, now})
	}
	s.held = s.held[:0]
	var uids []string
	for _, c := range cands {
		if c.Seq > 1 {
			uids = append(uids, c.UID)
		}
	}
	var delivered map[string]int64
	if len(uids) > 0 {
		ctx, cancel := context.WithTimeout(s.ctx, orderTimeout)
		var err error
		delivered, err = s.cfg.Order.Delivered(ctx, uids)
		cancel()
		if err != nil {
			// Redis does not answer: order is not known, and waiting
			// for it would hold every event up.
			s.log.Warn("webhook: the order of events is not known; sending them as they come", "err", err)
			s.heldGauge.Set(0)
			return eventsOf(cands)
		}
	}
	holdMax := s.cfg.Retry + s.cfg.Timeout + 2*s.cfg.BatchWait
	// Held events count against the queue's bound: past it the oldest go
	// without waiting more.
	overflow := len(cands) - s.cfg.QueueSize
	went := map[string]int64{} // per uid, the last event let go in this pass
	ready := make([]Event, 0, len(cands))
	for i, c := range cands {
		if c.Seq <= 1 || delivered[c.UID] >= c.Seq-1 || went[c.UID] == c.Seq-1 || now.Sub(c.since) >= holdMax || i < overflow {
			ready = append(ready, c.Event)
			went[c.UID] = max(went[c.UID], c.Seq)
			continue
		}
		s.held = append(s.held, c)
	}
	s.heldGauge.Set(float64(len(s.held)))
	return ready
}

// orderTimeout bounds a call to Order: a Redis that hangs, rather than
// refusing, slows the sender by this much per batch at most.
const orderTimeout = time.Second

func eventsOf(hs []heldEvent) []Event {
	out := make([]Event, len(hs))
	for i, h := range hs {
		out[i] = h.Event
	}
	return out
}

// delivered tells Order that batch went out or was given up: the next
// events of its uids may go.
func (s *Sender) delivered(batch []Event) {
	if s.cfg.Order == nil {
		return
	}
	var uids []string
	var seqs []int64
	for _, e := range batch {
		if e.Seq > 0 {
			uids, seqs = append(uids, e.UID), append(seqs, e.Seq)
		}
	}
	if len(uids) == 0 {
		return
	}
	// Bounded by the sender's life too: a shutdown cut short does not wait
	// for a hung Redis (the next events then wait their hold out).
	ctx, cancel := context.WithTimeout(s.ctx, orderTimeout)
	defer cancel()
	if err := s.cfg.Order.MarkDelivered(ctx, uids, seqs); err != nil {
		s.log.Warn("webhook: could not record events as delivered; the uids' next events wait", "events", len(uids), "err", err)
	}
}

// closingTimeout bounds a POST once Close began.
const closingTimeout = 2 * time.Second

// closing reports whether Close began.
func (s *Sender) closing() bool { return s.flushing.Err() != nil }

// flush delivers what is held and what is queued, in batches, until the
// queue is empty or the sender is cancelled. A shutdown does not wait
// for other senders: held events go as they are.
func (s *Sender) flush() {
	held := eventsOf(s.held)
	s.held = nil
	s.heldGauge.Set(0)
	for len(held) > 0 {
		if s.ctx.Err() != nil {
			s.dropped.Add(float64(len(held)))
			return
		}
		n := min(len(held), s.cfg.BatchMax)
		s.deliver(held[:n])
		held = held[n:]
	}
	for s.ctx.Err() == nil {
		batch := make([]Event, 0, s.cfg.BatchMax)
	fill:
		for len(batch) < s.cfg.BatchMax {
			select {
			case e := <-s.queue:
				batch = append(batch, e)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		s.deliver(batch)
	}
}

// deliver posts batch until a 2xx, retrying with backoff for Retry; then,
// delivered or given up, its uids' next events may go.
func (s *Sender) deliver(batch []Event) {
	defer s.delivered(batch)
	body, err := json.Marshal(batch)
	if err != nil {
		s.dropped.Add(float64(len(batch)))
		return
	}
	start, backoff := time.Now(), 250*time.Millisecond
	giveUp := start.Add(s.cfg.Retry)
	for {
		err := s.post(body, giveUp)
		if err == nil {
			s.sent.Add(float64(len(batch)))
			return
		}
		if time.Since(start)+backoff > s.cfg.Retry {
			s.dropped.Add(float64(len(batch)))
			s.log.Warn("webhook batch dropped", "events", len(batch), "retried_for", time.Since(start).Round(time.Millisecond), "err", err)
			return
		}
		if s.closing() {
			// Shutting down: one try each, no retries.
			s.dropped.Add(float64(len(batch)))
			return
		}
		s.log.Debug("webhook delivery failed; retrying", "events", len(batch), "retry_in", backoff, "err", err)
		select {
		case <-s.ctx.Done():
			s.dropped.Add(float64(len(batch)))
			return
		case <-s.flushing.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		s.retried.Add(float64(len(batch)))
	}
}

// post sends body once, signed, for at most Timeout and never past
// giveUp; once Close begins, for at most closingTimeout more: a shutdown
// does not wait for a slow receiver.
func (s *Sender) post(body []byte, giveUp time.Time) error {
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	deadline := time.Now().Add(s.cfg.Timeout)
	if giveUp.Before(deadline) {
		deadline = giveUp
	}
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	// A timer, not a goroutine, outlives this call: it cancels a context
	// that is done by then.
	stop := context.AfterFunc(s.flushing, func() { time.AfterFunc(closingTimeout, cancel) })
	defer stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Pusher-Timestamp", ts)
	req.Header.Set("X-Pusher-Signature", "sha256="+Sign(s.cfg.Secret, ts, body))
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()                                       //nolint:errcheck // a read body's close has nothing to say
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// Sign is the hex HMAC-SHA256 of "<timestamp>.<body>" with secret: the
// X-Pusher-Signature after "sha256=".
func Sign(secret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}
