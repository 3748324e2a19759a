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
}

// Sender posts events to a webhook.
//
// Goroutines: the sender, started by Start and stopped by Close.
type Sender struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	queue  chan Event

	ctx    context.Context
	cancel context.CancelFunc
	// flushing ends when Close begins: deliver what is queued, then end.
	flushing   context.Context
	startFlush context.CancelFunc
	done       chan struct{}
	closeOnce  sync.Once

	sent, retried, dropped prometheus.Counter
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
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.flushing, s.startFlush = context.WithCancel(context.Background())
	reg.MustRegister(s.sent, s.retried, s.dropped)
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

func (s *Sender) loop() {
	defer close(s.done)
	batch := make([]Event, 0, s.cfg.BatchMax)
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.flushing.Done():
			s.flush()
			return
		case e := <-s.queue:
			batch = append(batch[:0], e)
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
				s.dropped.Add(float64(len(batch)))
				return
			}
		}
		t.Stop()
		s.deliver(batch)
	}
}

// closingTimeout bounds a POST once Close began.
const closingTimeout = 2 * time.Second

// closing reports whether Close began.
func (s *Sender) closing() bool { return s.flushing.Err() != nil }

// flush delivers what is queued, in batches, until the queue is empty or
// the sender is cancelled.
func (s *Sender) flush() {
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

// deliver posts batch until a 2xx, retrying with backoff for Retry.
func (s *Sender) deliver(batch []Event) {
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
