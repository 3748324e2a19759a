package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"go-pusher/message"
)

// Server is one go-pusher node: its hub, its HTTP listeners and the
// message log. Listen, then Serve; Serve returns after a graceful shutdown.
type Server struct {
	cfg      Config
	log      *slog.Logger
	hub      *Hub
	auth     Authenticator
	msgLog   message.Logger
	broker   Broker
	metrics  *metrics
	ids      *idGenerator
	upgrader *websocket.Upgrader
	apiKey   [sha256.Size]byte // hashed, so comparing takes the same time whatever the key's length
	limits   sendLimits

	// draining is set when shutdown begins; inflight counts the /send
	// requests and /ws handshakes under way, so that shutdown can let them
	// finish (every acknowledged message queued) before connections close.
	draining atomic.Bool
	inflight atomic.Int64
	idle     chan struct{} // signalled when inflight drops to 0 while draining

	servers   []*http.Server
	listeners []net.Listener
	lane      *fastLane // in front of the listener of /send; nil with -fast-send=false
}

// newServer builds a server; msgLog is closed by Serve's shutdown.
func newServer(cfg Config, log *slog.Logger, msgLog message.Logger) (*Server, error) {
	ids, err := newIDGenerator()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      log,
		auth:     NewJWTAuthenticator(cfg.JWTSecret, time.Now),
		msgLog:   msgLog,
		ids:      ids,
		upgrader: newUpgrader(),
		apiKey:   sha256.Sum256([]byte(cfg.APIKey)),
		limits:   sendLimits{MaxMessageSize: cfg.MaxMessageSize, MaxMulticast: cfg.MaxMulticast},
		idle:     make(chan struct{}, 1),
	}
	s.hub = newHub(hubConfig{
		MaxConnsPerUser: cfg.MaxConnsPerUser,
		SendBuffer:      cfg.SendBuffer,
		PingInterval:    cfg.PingInterval,
		PongWait:        cfg.PongWait,
		WriteTimeout:    cfg.WriteTimeout,
	}, log, msgLog, nil)
	s.metrics = newMetrics(s.hub)
	s.hub.metrics = s.metrics
	if ml, ok := msgLog.(*message.MySQLLogger); ok {
		s.metrics.reg.MustRegister(newMySQLCollector(ml))
	}
	var sweep func()
	hist := historyLimits{Size: cfg.HistorySize, TTL: cfg.HistoryTTL, MaxBytes: cfg.HistoryBytes}
	if cfg.RedisURL != "" {
		rb, err := newRedisBroker(context.Background(), cfg.RedisURL, cfg.RedisPrefix, hist, cfg.MessageLogTimeout, s.hub, log, s.metrics.reg)
		if err != nil {
			return nil, err
		}
		s.broker, s.hub.events = rb, rb
	} else {
		lb := localBroker{hub: s.hub, hist: newMemHistory(hist, time.Now, s.metrics.reg)}
		s.broker, s.hub.events = lb, lb
		sweep = lb.hist.sweep
	}
	trim := newTrimmer(debug.FreeOSMemory, func(freed uint64) {
		s.metrics.memoryTrims.Inc()
		s.metrics.memoryTrimmed.Add(float64(freed))
		log.Info("returned free memory to the system", "bytes", freed)
	})
	floor := newGCFloor(uint64(cfg.GCHeapFloor), os.Getenv("GOGC"), debug.SetGCPercent)
	s.hub.pinger.onTick = func() {
		if sweep != nil {
			sweep()
		}
		busy := trim.tick()
		if floor != nil {
			floor.tick(busy)
		}
	}
	if floor != nil {
		s.hub.pinger.onStop = floor.release // GOGC is the process's
	}
	return s, nil
}

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
	if err := s.listen("-addr", s.cfg.Addr, public); err != nil {
		return err
	}
	if internal != nil {
		if err := s.listen("-internal-addr", s.cfg.InternalAddr, internal); err != nil {
			s.closeListeners()
			return err
		}
	}
	if s.cfg.FastSend && laneSupported {
		// In front of the listener that serves /send: the internal one
		// if any. Serve starts it.
		s.lane = newFastLane(s, s.listeners[len(s.listeners)-1], laneLimitsOf(s))
	}
	return nil
}

// The HTTP listeners' limits (the fast lane's too).
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

func (s *Server) listen(flagName, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", flagName, addr, err)
	}
	s.listeners = append(s.listeners, ln)
	s.servers = append(s.servers, &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	})
	return nil
}

func (s *Server) closeListeners() {
	for _, ln := range s.listeners {
		// Nothing was served on it; there is nothing to report.
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
	go s.hub.run() // stopped by hub.Shutdown in shutdown
	if rb, ok := s.broker.(*RedisBroker); ok {
		rb.Start() // stopped by broker.Close in shutdown
	}
	errc := make(chan error, len(s.servers))
	for i, srv := range s.servers {
		ln := s.listeners[i]
		if s.lane != nil && ln == s.lane.ln {
			s.lane.start()
			ln = s.lane
		}
		go func() { errc <- srv.Serve(ln) }()
	}
	s.log.Info("listening", "addr", s.Addr(), "internal_addr", s.InternalAddr(), "message_log", s.cfg.MessageLog, "cluster", s.cfg.RedisURL != "")

	var err error
	running := len(s.servers)
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
		<-errc // http.ErrServerClosed
	}
	return err
}

// shutdown: readiness off and no new messages, flush every queue and close
// every connection with 1001, stop the listeners, flush the message log.
func (s *Server) shutdown(ctx context.Context) {
	start := time.Now()
	s.draining.Store(true)
	s.log.Info("shutting down", "connections", s.hub.Connections(), "pending", s.hub.Pending())
	s.waitInflight(ctx)

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
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil {
			// Requests still running past the deadline are cut.
			_ = srv.Close()
		}
	}
	if s.lane != nil {
		s.lane.wait(ctx) // closed by its server's Shutdown
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
	replyText(w, http.StatusOK, "ok")
}

// handleReadyz is 200 while every dependency answers and the server is not
// shutting down, 503 with the reason otherwise.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		replyText(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.msgLog.Ready(ctx); err != nil {
		replyText(w, http.StatusServiceUnavailable, "message log: "+err.Error())
		return
	}
	if err := s.broker.Ready(ctx); err != nil {
		replyText(w, http.StatusServiceUnavailable, "cluster: "+err.Error())
		return
	}
	replyText(w, http.StatusOK, "ready")
}

// checkAPIKey reports whether r carries "Authorization: Bearer <key>",
// comparing in constant time.
func (s *Server) checkAPIKey(r *http.Request) bool {
	got := sha256.Sum256([]byte(bearerToken(r)))
	return subtle.ConstantTimeCompare(got[:], s.apiKey[:]) == 1
}

// replyText writes a one-line plain-text answer and returns code.
func replyText(w http.ResponseWriter, code int, text string) int {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// A write error means the client left; there is no one to tell.
	_, _ = w.Write([]byte(text + "\n"))
	return code
}
