package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The scenarios.
const (
	scenarioIdle      = "idle"
	scenarioSend      = "send"
	scenarioMulticast = "multicast"
	scenarioChurn     = "churn"
	scenarioReconnect = "reconnect"
	scenarioBatch     = "batch"
	scenarioRetry     = "retry"
)

// errCheckFailed is returned by Run after the report when the server lost,
// duplicated or reordered messages, or did not return to its baseline.
var errCheckFailed = errors.New("check failed")

// Engine runs one scenario against a go-pusher server (or, with Target
// centrifugo, a Centrifugo server: centrifugo.go) and writes its report
// to Out. The zero value is not usable: parseFlags (or a test)
// fills every field; validate says what is missing.
type Engine struct {
	// URL is the server's public base URL (http://host:port); /ws is
	// dialled there, as ws://. Several, comma-separated, are the nodes of
	// a cluster: connections are spread over them (a redial goes to the
	// next node), and so are /send requests.
	URL string
	// InternalURL is the base URL of /send and /metrics; empty: URL.
	// With several nodes, one per node of URL, in the same order.
	InternalURL string
	// JWTSecret signs the client tokens (HS256, claim uid), as the
	// server's JWT_SECRET.
	JWTSecret string
	// APIKey is the server's PUSHER_API_KEY, presented on /send.
	APIKey string
	// Target is the server's protocol: go-pusher ("" too) or centrifugo
	// (idle and send only; see centrifugo.go).
	Target string
	// CentrifugoNamespace is, with Target centrifugo, the namespace of
	// the users' personal channels, <namespace>:#<uid> (#<uid> when
	// empty), as Centrifugo's personal_channel_namespace.
	CentrifugoNamespace string
	// ServerPIDs, when not empty, are the server processes (one per
	// node, or the server and its Redis): their RSS and CPU time are read
	// from /proc/PID and added up.
	// Empty: from the servers' own process_resident_memory_bytes and
	// process_cpu_seconds_total.
	ServerPIDs []int

	// Scenario is idle, send, batch, multicast, churn, reconnect or retry.
	Scenario string
	// Label names the run in the report (e.g. "message-log=none").
	Label string

	// Users is the number of distinct uids; each holds ConnsPerUser
	// connections (slots), so the run opens Users×ConnsPerUser of them.
	Users        int
	ConnsPerUser int
	// Senders is the number of concurrent /send clients, each sequential
	// on its own keep-alive connection, so its messages to one uid are in
	// /send order and must arrive in that order.
	Senders int
	// Messages is the number of unicasts (send, batch, retry), or the
	// most that churn sends in its Duration.
	Messages int
	// MulticastSize is the number of uids in one multicast (0: Users), and
	// Rounds the number of multicast requests.
	MulticastSize int
	Rounds        int
	// Size is the message size in bytes. Messages start with the header
	// s<sender>:<seq>:<unixnano>: and are padded with x up to Size.
	Size int
	// Rate caps requests per second over all senders (0: none): /send
	// requests, batch's /send/batch requests, retry's requests with all
	// their tries.
	Rate float64
	// Form sends unicasts as form bodies instead of JSON (send, churn,
	// reconnect).
	Form bool
	// BatchItems is the number of unicasts in one POST /send/batch
	// (batch; retry when above 1, else retry posts keyed /send).
	BatchItems int

	// Retry: a try that gets no answer within RetryTimeout (doubled at
	// each retry, up to RequestTimeout) is tried again with the same
	// keys; RetryAbandon of the first tries are hung up on once written;
	// a message gets at most RetryAttempts tries. RetryRepeat of the
	// requests are sent once more after their 200, to check the replay.
	RetryTimeout  time.Duration
	RetryAbandon  float64
	RetryRepeat   float64
	RetryAttempts int

	// Duration is how long churn closes and redials connections, and
	// reconnect drops them.
	Duration time.Duration
	// Settle is how long idle holds its connections before it measures,
	// and how long churn waits before it checks for leaks.
	Settle time.Duration
	// Drain bounds the wait for accepted messages after the last /send.
	Drain time.Duration
	// ConnectTimeout bounds opening every connection and seeing the
	// server's connections gauge count them.
	ConnectTimeout time.Duration
	// SettleTimeout bounds the wait for the gauges to return to their
	// baseline after the connections closed (idle, churn).
	SettleTimeout time.Duration
	// RequestTimeout bounds one /send and one handshake.
	RequestTimeout time.Duration
	// MaxTime bounds the whole run.
	MaxTime time.Duration

	// DialConcurrency is the number of handshakes in flight at once.
	DialConcurrency int
	// SourceAddrs spreads connections over 127.0.0.1..SourceAddrs when
	// the server is on loopback: each source address has its own range of
	// ephemeral ports, so tens of thousands of connections (and churn's
	// TIME_WAIT sockets) never run out of them. 0: the kernel chooses.
	SourceAddrs int

	// ChurnFraction of the connections close after a random lifetime
	// around ChurnLifetime and redial; ChurnAbrupt of those closes drop
	// the TCP connection without a close frame. The others stay open for
	// the whole run, so that delivery can be checked across the churn.
	ChurnFraction float64
	ChurnLifetime time.Duration
	ChurnAbrupt   float64
	// RegisterGrace: a connection must have been open this long before a
	// /send was issued to be expected to get it. The server registers a
	// connection after it answers the upgrade, so a /send issued just after
	// the handshake may rightly miss it.
	RegisterGrace time.Duration
	// GoroutineSlack is how many goroutines above the baseline still
	// count as back to it after churn (the runtime has a few of its own).
	GoroutineSlack int

	// Reconnect: every connection asks for format=json and the tool keeps
	// the last offset each slot received. Each connection drops after a
	// random time (exponential, mean DropInterval): it stops reading for
	// up to DropStall, so that messages are in flight, then closes the TCP
	// socket without a close frame. The slot redials after a delay
	// uniform in [RedialMin, RedialMax], with ?since= its last offset.
	DropInterval time.Duration
	DropStall    time.Duration
	RedialMin    time.Duration
	RedialMax    time.Duration

	// UIDPrefix is the prefix of the uids: prefix0, prefix1, ...
	UIDPrefix string
	// JSON prints the report as one JSON object instead of text.
	JSON bool
	// Out receives the report.
	Out io.Writer
}

// validate returns every problem of the settings at once.
func (e *Engine) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if e.JWTSecret == "" {
		bad("JWT_SECRET is required: the server's secret, to sign client tokens")
	}
	if e.APIKey == "" && e.Scenario != scenarioIdle {
		bad("PUSHER_API_KEY is required: the server's key, to call /send")
	}
	nodes, internal := splitList(e.URL), splitList(e.InternalURL)
	if len(nodes) == 0 {
		bad("-url is required: the server's base URL, or several comma-separated (cluster nodes)")
	}
	if len(internal) > 0 && len(internal) != len(nodes) {
		bad("-internal-url has %d URLs and -url %d: want one per node, in the same order", len(internal), len(nodes))
	}
	for name, us := range map[string][]string{"-url": nodes, "-internal-url": internal} {
		for _, u := range us {
			if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
				bad("invalid %s %q: want http://host:port", name, u)
			}
		}
	}
	for _, pid := range e.ServerPIDs {
		if pid <= 0 {
			bad("invalid -server-pid %d: want process ids", pid)
		}
	}
	switch e.Scenario {
	case scenarioIdle, scenarioSend, scenarioBatch, scenarioMulticast, scenarioChurn, scenarioReconnect, scenarioRetry:
	default:
		bad("invalid -scenario %q: want idle, send, batch, multicast, churn, reconnect or retry", e.Scenario)
	}
	errs = append(errs, e.validateItems()...)
	errs = append(errs, e.validateTarget()...)
	positive := map[string]int{
		"-users": e.Users, "-conns-per-user": e.ConnsPerUser, "-senders": e.Senders,
		"-messages": e.Messages, "-rounds": e.Rounds, "-size": e.Size, "-dial-concurrency": e.DialConcurrency,
	}
	for name, v := range positive {
		if v < 1 {
			bad("invalid %s %d: must be at least 1", name, v)
		}
	}
	if e.MulticastSize < 0 || e.MulticastSize > e.Users {
		bad("invalid -multicast %d: between 1 and -users (0: all)", e.MulticastSize)
	}
	if e.Users > 1<<30 || e.Messages > 1<<30 || e.Rounds > 1<<30 {
		bad("-users, -messages and -rounds are at most %d", 1<<30)
	}
	if e.SourceAddrs < 0 || e.SourceAddrs > 254 {
		bad("invalid -source-addrs %d: between 0 and 254", e.SourceAddrs)
	}
	if e.Rate < 0 {
		bad("invalid -rate %v: must not be negative", e.Rate)
	}
	if e.ChurnFraction < 0 || e.ChurnFraction > 1 || e.ChurnAbrupt < 0 || e.ChurnAbrupt > 1 {
		bad("-churn-fraction and -churn-abrupt are between 0 and 1")
	}
	durations := map[string]time.Duration{
		"-duration": e.Duration, "-drain": e.Drain, "-connect-timeout": e.ConnectTimeout,
		"-settle-timeout": e.SettleTimeout, "-timeout": e.RequestTimeout, "-max-time": e.MaxTime, "-churn-lifetime": e.ChurnLifetime,
	}
	for name, d := range durations {
		if d <= 0 {
			bad("invalid %s %s: must be positive", name, d)
		}
	}
	if e.Settle < 0 || e.RegisterGrace < 0 || e.GoroutineSlack < 0 {
		bad("-settle, -register-grace and -goroutine-slack must not be negative")
	}
	if e.Scenario == scenarioReconnect {
		if e.DropInterval <= 0 {
			bad("invalid -drop-interval %s: must be positive", e.DropInterval)
		}
		if e.DropStall < 0 || e.RedialMin < 0 || e.RedialMax < e.RedialMin {
			bad("-drop-stall and -redial-min must not be negative, and -redial-max is at least -redial-min")
		}
	}
	for _, r := range e.UIDPrefix {
		// The tool writes JSON and form bodies by hand: uids stay plain.
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			bad("invalid -uid-prefix %q: letters, digits, '-', '_' and '.' only", e.UIDPrefix)
			break
		}
	}
	if len(e.UIDPrefix) > 100 {
		bad("invalid -uid-prefix: longer than 100 bytes")
	}
	return errors.Join(errs...)
}

// Run runs the scenario, writes the report to Out and returns
// errCheckFailed when the report shows a failure.
func (e *Engine) Run(ctx context.Context) error {
	rep, err := e.Measure(ctx)
	if rep != nil {
		if perr := rep.print(e.Out, e.JSON); perr != nil {
			return errors.Join(err, perr)
		}
	}
	if err != nil {
		return err
	}
	if len(rep.Problems) > 0 {
		return errCheckFailed
	}
	return nil
}

// Measure runs the scenario and returns its report. A report comes back
// with an error too when the run got far enough to measure something.
func (e *Engine) Measure(ctx context.Context) (*Report, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, e.MaxTime)
	defer cancel()
	r, err := e.newRun()
	if err != nil {
		return nil, err
	}
	defer r.close()
	start := time.Now()
	var rep *Report
	switch e.Scenario {
	case scenarioIdle:
		rep, err = r.idle(ctx)
	case scenarioSend, scenarioMulticast, scenarioBatch, scenarioRetry:
		rep, err = r.send(ctx)
	case scenarioReconnect:
		rep, err = r.reconnect(ctx)
	default:
		rep, err = r.churn(ctx)
	}
	if rep != nil {
		rep.Elapsed = time.Since(start).Seconds()
	}
	return rep, err
}

// runner is the state of one Measure: what the scenarios share.
type runner struct {
	e      *Engine
	users  []string // uid of each user
	tokens []string // token of each slot's user
	// channels is, with Target centrifugo, each user's personal channel.
	channels []string
	// auth is the header that presents the API key on each send.
	auth   apiAuth
	probe  *probe
	http   *http.Client // /send to https:// nodes (http:// ones: keepalive.go)
	sendTo []string     // /send (or /send/batch) URL of each node
	nodes  []string     // public base URL of each node
	// keyPrefix starts every idempotency key of the run (retry).
	keyPrefix string

	// expect counts the deliveries the server owes after 2xx answers when
	// every connection is held (send, multicast); recv counts every
	// message the receivers read. Drain compares them.
	expect atomic.Int64
	recv   atomic.Int64

	// stats adds up the batch and retry senders' counts as they close.
	statsMu sync.Mutex
	stats   postStats
}

func (e *Engine) newRun() (*runner, error) {
	nodes := splitList(e.URL)
	internal := splitList(e.InternalURL)
	if len(internal) == 0 {
		internal = nodes
	}
	r := &runner{
		e:      e,
		users:  make([]string, e.Users),
		tokens: make([]string, e.Users),
		nodes:  nodes,
		// Random per run: the server remembers keys for minutes.
		keyPrefix: "pb" + strconv.FormatUint(rand.Uint64(), 36),
	}
	path := "/send"
	switch {
	case e.centrifugo():
		path = centrifugoPublishPath
	case e.batched():
		path = "/send/batch"
	}
	metrics := make([]string, len(internal))
	for i, u := range internal {
		u = strings.TrimSuffix(u, "/")
		r.sendTo = append(r.sendTo, u+path)
		metrics[i] = u + "/metrics"
	}
	// Tokens expire after the longest run, so a leaked one is worth little.
	exp := jwt.NewNumericDate(time.Now().Add(e.MaxTime + time.Hour))
	key := []byte(e.JWTSecret)
	claim := "uid"
	r.auth = bearer(e.APIKey)
	if e.centrifugo() {
		claim, r.auth = "sub", apiAuth{name: "X-API-Key", value: e.APIKey}
		r.channels = make([]string, e.Users)
	}
	for i := range r.users {
		r.users[i] = e.UIDPrefix + strconv.Itoa(i)
		if r.channels != nil {
			r.channels[i] = personalChannel(e.CentrifugoNamespace, r.users[i])
		}
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{claim: r.users[i], "exp": exp}).SignedString(key)
		if err != nil {
			return nil, fmt.Errorf("sign token: %w", err)
		}
		r.tokens[i] = tok
	}
	r.http = &http.Client{
		Timeout: e.RequestTimeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: e.RequestTimeout}).DialContext,
			MaxIdleConnsPerHost: e.Senders,
			MaxConnsPerHost:     e.Senders + 1,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		},
	}
	r.probe = newProbe(metrics, metricsOf(e.Target), e.ServerPIDs, e.RequestTimeout)
	return r, nil
}

// splitList returns the comma-separated items of s, trimmed, without
// empty ones.
func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (r *runner) close() {
	r.http.CloseIdleConnections()
	r.probe.close()
}

// slots returns the number of connections the run holds at once.
func (r *runner) slots() int { return r.e.Users * r.e.ConnsPerUser }

// waitUntil polls cond every step until it holds, ctx ends or timeout
// passes; it reports whether cond held.
func waitUntil(ctx context.Context, timeout, step time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-t.C:
		}
	}
}

// sleep waits d or until ctx ends, and reports whether it slept all of d.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
