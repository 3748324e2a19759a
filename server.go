package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"go-pusher/internal/cluster"
	"go-pusher/internal/history"
	"go-pusher/internal/idempotency"
	"go-pusher/internal/jwks"
	"go-pusher/internal/memtune"
	"go-pusher/internal/presence"
	"go-pusher/internal/revoke"
	"go-pusher/internal/sendreq"
	"go-pusher/internal/stream"
	"go-pusher/internal/webhook"
	"go-pusher/message"
)

// Server is one go-pusher node: its hub, its HTTP listeners, the broker
// and the message log. Listen, then Serve; Serve returns after a graceful
// shutdown.
type Server struct {
	cfg      Config
	log      *slog.Logger
	hub      *Hub
	auth     Authenticator
	msgLog   message.Logger
	jwks     *jwks.Keys        // -jwks-url; nil without
	jwt      *JWTAuthenticator // s.auth, for in-band refreshes
	revoked  revocations
	webhook  *webhook.Sender // -webhook-url; nil without
	presence presenceTracker // with webhook
	// lookupFirst: the message log writes a row per message and uid
	// before it is sent (delivery statuses update it), so /send asks
	// which uids are online first and logs only theirs. Without a log
	// (-message-log none) the publish finds the uids without a
	// connection itself, and a /send in cluster mode costs Redis one
	// round trip rather than two.
	lookupFirst bool
	broker      Broker
	idem        idempotencyStore // nil when -idempotency-ttl is 0
	trimmer     *memtune.Trimmer
	metrics     *metrics
	ids         *stream.IDGenerator
	upgrader    *websocket.Upgrader
	apiKey      [sha256.Size]byte // hashed, so comparing takes the same time whatever the key's length
	limits      sendreq.Limits

	// draining is set when shutdown begins; inflight counts the /send
	// requests and /ws handshakes under way, so that shutdown can let them
	// finish (every acknowledged message queued) before connections close.
	draining atomic.Bool
	inflight atomic.Int64
	idle     chan struct{} // signalled when inflight drops to 0 while draining

	ready readiness

	fronts    []front // the public listener's, then the internal one's
	listeners []net.Listener
}

// front is the HTTP server of one listener: net/http on the public one,
// fasthttp on the internal one (internal.go).
type front interface {
	Serve(ln net.Listener) error
	// Shutdown stops accepting and waits for the requests under way; at
	// ctx's end it closes what is left.
	Shutdown(ctx context.Context) error
}

// httpFront is a net/http server as a front.
type httpFront struct{ srv *http.Server }

func (f httpFront) Serve(ln net.Listener) error { return f.srv.Serve(ln) }

func (f httpFront) Shutdown(ctx context.Context) error {
	err := f.srv.Shutdown(ctx)
	if err != nil {
		// Requests still running past the deadline are cut.
		_ = f.srv.Close()
	}
	return err
}

// newServer builds a server; msgLog is closed by Serve's shutdown.
func newServer(cfg Config, log *slog.Logger, msgLog message.Logger) (*Server, error) {
	ids, err := stream.NewIDGenerator()
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	s := &Server{
		cfg:    cfg,
		log:    log,
		msgLog: msgLog,
		lookupFirst: func() bool {
			_, none := msgLog.(message.NoneLogger)
			return !none
		}(),
		metrics:  m,
		ids:      ids,
		upgrader: newUpgrader(),
		apiKey:   sha256.Sum256([]byte(cfg.APIKey)),
		limits: sendreq.Limits{
			MaxMessageSize: cfg.MaxMessageSize, MaxMulticast: cfg.MaxMulticast,
			MaxBatch: cfg.MaxBatch, MaxBatchBytes: cfg.MaxBatchBytes,
		},
		idle:    make(chan struct{}, 1),
		trimmer: memtune.New(log, m.reg),
	}
	s.hub = newHub(hubConfig{
		MaxConnsPerUser: cfg.MaxConnsPerUser,
		SendBuffer:      cfg.SendBuffer,
		PingInterval:    cfg.PingInterval,
		PongWait:        cfg.PongWait,
		WriteTimeout:    cfg.WriteTimeout,
	}, log, m, msgLog)
	m.registerGauges(s.hub)
	if ml, ok := msgLog.(*message.MySQLLogger); ok {
		m.reg.MustRegister(newMySQLCollector(ml))
	}
	if cfg.RedisURL != "" {
		cb, err := cluster.New(context.Background(), cluster.Config{
			URL:            cfg.RedisURL,
			Prefix:         cfg.RedisPrefix,
			HistorySize:    cfg.HistorySize,
			HistoryTTL:     cfg.HistoryTTL,
			OpTimeout:      cfg.MessageLogTimeout,
			IdempotencyTTL: cfg.IdempotencyTTL,
		}, s.hub, log.With("component", "cluster"), m.reg)
		if err != nil {
			return nil, err
		}
		s.broker, s.revoked = cb, cb
		if cfg.IdempotencyTTL > 0 {
			s.idem = cb
		}
	} else {
		hist := history.New(history.Limits{Size: cfg.HistorySize, TTL: cfg.HistoryTTL, MaxBytes: cfg.HistoryBytes},
			s.hub, log.With("component", "history"), m.reg)
		s.broker = localBroker{hub: s.hub, hist: hist}
		s.revoked = localRevocations{revoke.NewMemory(cfg.RevokeTTL, time.Now)}
		if cfg.IdempotencyTTL > 0 {
			mem := idempotency.NewMemory(cfg.IdempotencyTTL, int(cfg.IdempotencyMem))
			s.idem = mem
			m.registerIdempotency(mem)
		}
	}
	s.hub.events = s.broker
	opts := AuthOptions{Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, UIDClaim: cfg.JWTUIDClaim}
	if cfg.JWKSURL != "" {
		keys, err := jwks.New(jwks.Config{
			URL: cfg.JWKSURL, Refresh: cfg.JWKSRefresh, Timeout: jwksTimeout, MaxBytes: jwksMaxBytes,
			UnknownKIDEvery: jwksUnknownKIDEvery,
		}, log.With("component", "jwks"))
		if err != nil {
			return nil, err
		}
		s.jwks, opts.Keys = keys, keys
	}
	s.jwt = NewAuthenticator(cfg.JWTSecret, opts, time.Now)
	s.auth, s.hub.tokens = s.jwt, tokenChecker{s}
	if cfg.WebhookURL != "" {
		s.startPresence(log, m)
	}
	m.registerReady(func() bool { return s.readyErr(context.Background()) == nil })
	return s, nil
}

// startPresence sends online and offline events to -webhook-url: kept in
// memory on one node, in Redis in cluster mode (each transition sent by
// one node). Last in newServer: the cluster tracker's worker starts here.
func (s *Server) startPresence(log *slog.Logger, m *metrics) {
	cb, clustered := s.broker.(*cluster.Broker)
	var order webhook.Order
	if clustered {
		// Several nodes send a uid's events: Redis keeps their order.
		order = cb
	}
	s.webhook = webhook.New(webhook.Config{
		URL: s.cfg.WebhookURL, Secret: s.cfg.WebhookSecret, Retry: s.cfg.WebhookRetry, Timeout: webhookTimeout,
		QueueSize: webhookQueue, BatchMax: 100, BatchWait: time.Second, Order: order,
	}, log.With("component", "webhook"), m.reg)
	emit := func(event, uid string, at time.Time, seq int64) {
		s.webhook.Send(webhook.Event{Event: event, UID: uid, Time: at.UTC().Format(webhook.TimeFormat), Seq: seq})
	}
	if clustered {
		cb.OnPresence(func(ev cluster.PresenceEvent) { emit("offline", ev.UID, ev.At, ev.Seq) })
		cb.OnRejoin(s.hub.Reannounce)
		s.presence = presence.NewCluster(cb, s.cfg.WebhookOfflineDelay, webhookQueue, emit, log.With("component", "presence"))
	} else {
		s.presence = presence.New(s.cfg.WebhookOfflineDelay, emit, time.Now)
	}
	s.hub.events = presenceEvents{s.broker, s.presence}
}

// The bounds of the presence webhook: one POST's time, and the events
// that may wait (past it they are dropped and counted).
const (
	webhookTimeout = 10 * time.Second
	webhookQueue   = 100_000
	// webhookFlushMax bounds a cluster node's webhook flush at shutdown,
	// which comes before its connections' drain.
	webhookFlushMax = 3 * time.Second
)

// presenceTracker learns of a uid's first and last connection here
// (presence.Tracker on one node, presence.Cluster in cluster mode).
type presenceTracker interface {
	Online(uid string)
	Offline(uid string)
	Close()
}

// presenceEvents tells the broker and the presence tracker of a uid's
// first and last connection here.
type presenceEvents struct {
	hubEvents
	t presenceTracker
}

func (p presenceEvents) UserOnline(uid string) {
	p.hubEvents.UserOnline(uid)
	p.t.Online(uid)
}

func (p presenceEvents) UserOffline(uid string) {
	p.hubEvents.UserOffline(uid)
	p.t.Offline(uid)
}

// The bounds of fetching a JWKS: one fetch's time and size, and how
// often a token with an unknown kid may fetch it again (whatever the kid).
const (
	jwksTimeout         = 10 * time.Second
	jwksMaxBytes        = 1 << 20
	jwksUnknownKIDEvery = 30 * time.Second
)

// routes returns the handlers of the public listener and, when
// -internal-addr is set, of the internal one (nil otherwise).
func (s *Server) routes() (public, internal http.Handler) {
	pub := http.NewServeMux()
	pub.HandleFunc("/ws", s.serveWs)
	if s.cfg.Console {
		pub.Handle("/", consoleHandler())
	}

	ops := pub
	if s.cfg.InternalAddr != "" {
		ops = http.NewServeMux()
		internal = ops
	}
	ops.HandleFunc("/send", s.handleSend)
	ops.HandleFunc("/send/batch", s.handleBatch)
	ops.HandleFunc("/disconnect", s.handleAPI(s.disconnect))
	ops.HandleFunc("/online", s.handleAPI(s.online))
	ops.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	ops.HandleFunc("/healthz", s.handleHealthz)
	ops.HandleFunc("/readyz", s.handleReadyz)
	if s.cfg.Pprof {
		ops.HandleFunc("/debug/pprof/", pprof.Index)
		ops.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		ops.HandleFunc("/debug/pprof/profile", pprof.Profile)
		ops.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		ops.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return pub, internal
}

// Listen binds the listeners, so that a port in use is an error at start.
func (s *Server) Listen() error {
	public, internal := s.routes()
	if err := s.listen("-addr", s.cfg.Addr, s.newHTTPFront(public)); err != nil {
		return err
	}
	if internal != nil {
		if err := s.listen("-internal-addr", s.cfg.InternalAddr, s.newFastFront(internal)); err != nil {
			s.closeListeners()
			return err
		}
	}
	return nil
}

// The HTTP listeners' limits.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

func (s *Server) listen(flagName, addr string, f front) error {
	var lc net.ListenConfig // what net.Listen uses; nothing to cancel at startup
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", flagName, addr, err)
	}
	s.listeners = append(s.listeners, ln)
	s.fronts = append(s.fronts, f)
	return nil
}

func (s *Server) newHTTPFront(h http.Handler) httpFront {
	return httpFront{&http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}}
}

func (s *Server) closeListeners() {
	for _, ln := range s.listeners {
		// Closed already by its server, or never served on: there is
		// nothing to report either way.
		_ = ln.Close()
	}
}

// Addr returns the public listener's address (after Listen).
func (s *Server) Addr() string { return s.listeners[0].Addr().String() }

// InternalAddr returns the internal listener's address, or "".
func (s *Server) InternalAddr() string {
	if len(s.listeners) < 2 {
		return ""
	}
	return s.listeners[1].Addr().String()
}

// Serve serves until ctx ends (a signal) or a listener fails, then shuts
// down gracefully within -shutdown-timeout. It returns the listener's
// failure, or nil.
func (s *Server) Serve(ctx context.Context) error {
	go s.hub.run()    // stopped by hub.Shutdown in shutdown
	s.broker.Start()  // stopped by broker.Close in shutdown
	s.trimmer.Start() // stopped by trimmer.Close in shutdown
	if s.jwks != nil {
		s.jwks.Start() // stopped by jwks.Close in shutdown
	}
	if s.webhook != nil {
		s.webhook.Start() // stopped by webhook.Close in shutdown
	}
	errc := make(chan error, len(s.fronts))
	for i, f := range s.fronts {
		go func() { errc <- f.Serve(s.listeners[i]) }()
	}
	s.log.Info("listening", "addr", s.Addr(), "internal_addr", s.InternalAddr(), "message_log", s.cfg.MessageLog, "cluster", s.cfg.RedisURL != "")

	var err error
	running := len(s.fronts)
	select {
	case <-ctx.Done():
	case err = <-errc:
		running--
		err = fmt.Errorf("serve: %w", err)
	}
	// A fresh context: ctx is done already when a signal brought us here.
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	s.shutdown(sctx)
	for range running {
		<-errc //nolint:errcheck // http.ErrServerClosed, or fasthttp's nil: what failed is in err already
	}
	return err
}

// shutdown: readiness off and no new messages, flush every queue and close
// every connection with 1001, stop the listeners, flush the message log.
func (s *Server) shutdown(ctx context.Context) {
	start := time.Now()
	s.draining.Store(true)
	if s.jwks != nil {
		// First: a handshake or a refresh waiting on a fetch for an
		// unknown kid ends now (the keys stay usable), rather than
		// holding the drain up to a fetch's 10 s.
		s.jwks.Close()
	}
	s.log.Info("shutting down", "connections", s.hub.Connections(), "pending", s.hub.Pending())
	s.waitInflight(ctx)

	if c, ok := s.presence.(*presence.Cluster); ok {
		// While Redis is still ours: this node's users leave it (the
		// nodes that stay send their offlines, if none comes back).
		c.Drain(ctx, s.hub.uids())
		// Then what this node was to send goes out, and is marked
		// delivered in Redis, so that the uids' next events, sent by
		// other nodes, need not wait their hold out. A receiver that
		// does not answer costs the connections' drain webhookFlushMax
		// at most.
		if cb, ok := s.broker.(*cluster.Broker); ok {
			cb.StopPresence()
		}
		wctx, cancel := context.WithTimeout(ctx, webhookFlushMax)
		s.webhook.Close(wctx)
		cancel()
	}
	// Leave the cluster first: other nodes stop routing here, and what
	// they sent before reaches the connections before those close.
	if err := s.broker.Close(ctx); err != nil {
		s.log.Warn("broker close failed", "err", err)
	}
	drained := true
	if err := s.hub.Shutdown(ctx); err != nil {
		drained = false
		s.log.Warn("shutdown timeout: closed the remaining connections", "timeout", s.cfg.ShutdownTimeout)
	}
	for _, f := range s.fronts {
		if err := f.Shutdown(ctx); err != nil {
			s.log.Warn("listener shutdown cut requests short", "err", err)
		}
	}
	// fasthttp's Shutdown does nothing for a Serve that has not begun (a
	// signal during start): closing the listeners ends that Serve too.
	s.closeListeners()
	s.trimmer.Close()
	if s.webhook != nil {
		// The connections are closed: on one node their offlines go out
		// now rather than after a delay this node does not have; what is
		// queued is delivered within the shutdown's time.
		s.presence.Close()
		s.webhook.Close(ctx)
	}
	if err := s.msgLog.Close(ctx); err != nil {
		s.log.Error("message log flush failed", "err", err)
	}
	s.log.Info("stopped", "drained", drained, "took", time.Since(start).Round(time.Millisecond))
}

// enter admits a /send or /ws unless shutdown began; leave ends it.
func (s *Server) enter() bool {
	s.inflight.Add(1)
	if s.draining.Load() {
		s.leave()
		return false
	}
	return true
}

func (s *Server) leave() {
	if s.inflight.Add(-1) == 0 && s.draining.Load() {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
}

// waitInflight waits for the requests under way, for at most a third of
// what is left of ctx: one stuck on a dead stdout pipe or a hung Redis
// must not take the time the connections need to flush and close.
func (s *Server) waitInflight(ctx context.Context) {
	d := time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl) / 3
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for s.inflight.Load() > 0 {
		select {
		case <-s.idle:
		case <-timer.C:
			s.log.Warn("shutdown: requests still under way", "count", s.inflight.Load())
			return
		}
	}
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeHTTP(w, textReply(http.StatusOK, "ok"))
}

// readinessTTL is how long /readyz answers from its last check: a load
// balancer or an attacker polling it does not cost a MySQL and a Redis
// round trip per request.
const readinessTTL = time.Second

// readiness is the cached outcome of asking every dependency.
type readiness struct {
	mu      sync.Mutex
	checked time.Time
	err     error
}

// handleReadyz is 200 while every dependency answers and the server is not
// shutting down, 503 with the reason otherwise. On the public listener
// (no -internal-addr) the reason is generic and the details go to the
// log: they name hosts and errors that are nobody else's business.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if err := s.readyErr(r.Context()); err != nil {
		reason := err.Error()
		if s.cfg.InternalAddr == "" && !errors.Is(err, errDraining) {
			reason = "not ready: a dependency does not answer (the server log says which)"
		}
		writeHTTP(w, textReply(http.StatusServiceUnavailable, reason))
		return
	}
	writeHTTP(w, textReply(http.StatusOK, "ready"))
}

// errDraining is why a draining server is not ready.
var errDraining = errors.New("shutting down")

// readyErr is nil when the server can take traffic: it is not shutting
// down and every dependency answers.
func (s *Server) readyErr(ctx context.Context) error {
	if s.draining.Load() {
		return errDraining
	}
	return s.checkReady(ctx)
}

// checkReady asks the message log and the broker, at most once per
// readinessTTL, and logs a change of outcome.
func (s *Server) checkReady(ctx context.Context) error {
	s.ready.mu.Lock()
	defer s.ready.mu.Unlock()
	if time.Since(s.ready.checked) < readinessTTL {
		return s.ready.err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var err error
	if e := s.msgLog.Ready(ctx); e != nil {
		err = fmt.Errorf("message log: %w", e)
	} else if e := s.broker.Ready(ctx); e != nil {
		err = fmt.Errorf("cluster: %w", e)
	} else if s.jwks != nil {
		err = s.jwks.Ready()
	}
	switch {
	case err != nil && (s.ready.err == nil || s.ready.err.Error() != err.Error()):
		s.log.Warn("not ready", "reason", err.Error())
	case err == nil && s.ready.err != nil:
		s.log.Info("ready again")
	}
	s.ready.checked, s.ready.err = time.Now(), err
	return err
}

// checkAPIKey reports whether authorization is "Bearer <key>", comparing
// in constant time.
func (s *Server) checkAPIKey(authorization string) bool {
	got := sha256.Sum256([]byte(bearer(authorization)))
	return subtle.ConstantTimeCompare(got[:], s.apiKey[:]) == 1
}
