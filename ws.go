package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
)

// readBufferSize is each connection's read buffer. Clients have nothing to
// say (their messages are discarded in chunks); gorilla reads a frame
// header and then a control frame's payload (at most 125 bytes) from it,
// each whole (TestLargestPingIsAnswered).
const readBufferSize = 128

// refuseWait bounds how long a refused connection waits for the peer's
// close reply after the server's close frame.
const refuseWait = time.Second

// newUpgrader returns the /ws upgrader. The origin is checked before
// Upgrade (so a refused origin is a plain 403), hence CheckOrigin allows
// all. Every frame of a registered connection is written by its
// writePump, straight from the message; gorilla writes only the handshake
// and a refusal, borrowing a pooled buffer, so an idle connection holds
// no write buffer.
func newUpgrader() *websocket.Upgrader {
	return &websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   readBufferSize,
		WriteBufferSize:  4096,
		WriteBufferPool:  new(sync.Pool),
		CheckOrigin:      func(*http.Request) bool { return true },
	}
}

// originAllowed reports whether a browser at origin may connect. A request
// without Origin is not from a browser and is allowed: the token is what
// authenticates it.
func originAllowed(allowed []string, origin string) bool {
	if origin == "" {
		return true
	}
	origin = strings.ToLower(origin)
	for _, p := range allowed {
		p = strings.ToLower(p)
		switch {
		case p == "*", p == origin:
			return true
		case strings.Contains(p, "://*."):
			// https://*.example.com matches https://a.example.com, not
			// https://example.com nor https://a.evil.com/x.example.com.
			scheme, suffix, _ := strings.Cut(p, "://*")
			rest, ok := strings.CutPrefix(origin, scheme+"://")
			if ok && strings.HasSuffix(rest, suffix) && len(rest) > len(suffix) && !strings.ContainsAny(rest, "/@") {
				return true
			}
		}
	}
	return false
}

// serveWs handles GET /ws: origin, token, upgrade, register.
func (s *Server) serveWs(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.leave()
	if !originAllowed(s.cfg.AllowedOrigins, r.Header.Get("Origin")) {
		s.metrics.authFailures.WithLabelValues(authOrigin).Inc()
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	opt, since, err := parseStreamOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id, authErr := s.auth.Authenticate(r)
	if authErr == nil {
		authErr = s.checkRevoked(r.Context(), id)
	}
	guard := new(guardConn)
	conn, err := s.upgrader.Upgrade(&hijacker{w, guard}, r, nil)
	if err != nil {
		// Upgrade has answered with an HTTP error already.
		s.log.Debug("upgrade failed", "url", redactURL(r.URL), "remote", r.RemoteAddr, "err", err)
		return
	}
	if authErr != nil {
		reason, metric := authErr.Error(), authInvalidToken
		if ae, ok := errors.AsType[*authError](authErr); ok {
			metric = ae.Metric
		}
		s.metrics.authFailures.WithLabelValues(metric).Inc()
		s.log.Debug("authenticate failed", "remote", r.RemoteAddr, "reason", reason)
		refuse(conn, "authenticate error: "+reason, websocket.ClosePolicyViolation, reason)
		return
	}
	s.broker.Expect(r.Context(), id.UID)
	c := newClient(s.hub, conn, guard.TCPConn, id, opt)
	if err := s.hub.Register(c); err != nil {
		code := websocket.CloseGoingAway
		if errors.Is(err, errConnLimit) {
			code = websocket.ClosePolicyViolation
			s.metrics.authFailures.WithLabelValues(authConnectionLimit).Inc()
		}
		refuse(conn, "", code, err.Error())
		return
	}
	// From here on writePump is the connection's only writer.
	guard.sealed.Store(true)
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("connection opened", "uid", id.UID, "remote", r.RemoteAddr)
	}
	if opt.hold {
		// Registered and held: what is published from now on waits in
		// the queue while history is read.
		replay, ok := s.broker.Replay(r.Context(), id.UID, since)
		s.metrics.recovered(ok)
		c.release(replay, ok, since)
	}
	c.start()
	s.recheckRevoked(r.Context(), c, id)
}

// guardConn is the socket as gorilla sees it. gorilla writes on its own
// only before registration (the handshake, a refusal) and when its reader
// meets a frame that breaks RFC 6455: then it writes a 1002 close frame
// from readPump's goroutine, with a write deadline of its own. Once the
// connection is registered writePump is its only writer, so those writes
// are dropped here; readPump has writePump send the 1002 instead.
//
// It embeds the *net.TCPConn itself, not a net.Conn: a promoted method of
// an embedded pointer compiles to a tail call, so gorilla's reads cost no
// extra stack frame. Every idle connection's readPump is parked at the
// bottom of that read, and one more frame there took its stack past 2 KiB,
// doubling it (7.9 against 5.9 KiB of RSS per idle connection at 10,000).
type guardConn struct {
	*net.TCPConn
	sealed atomic.Bool
}

func (g *guardConn) Write(p []byte) (int, error) {
	if g.sealed.Load() {
		return len(p), nil
	}
	return g.TCPConn.Write(p)
}

func (g *guardConn) SetWriteDeadline(t time.Time) error {
	if g.sealed.Load() {
		return nil
	}
	return g.TCPConn.SetWriteDeadline(t)
}

// hijacker hands gorilla's Upgrade the hijacked socket inside guard.
type hijacker struct {
	http.ResponseWriter
	guard *guardConn
}

var errNotTCP = errors.New("websocket: not a TCP connection")

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		// The listeners are TCP; nothing else reaches here.
		_ = conn.Close()
		return nil, nil, errNotTCP
	}
	h.guard.TCPConn = tcp
	return h.guard, brw, nil
}

// parseStreamOptions reads ?format= and ?since= of a /ws request. since
// implies format=json.
func parseStreamOptions(r *http.Request) (clientOptions, stream.Position, error) {
	q := r.URL.Query()
	var opt clientOptions
	switch f := q.Get("format"); f {
	case "":
	case "json":
		opt.json = true
	default:
		return opt, stream.Position{}, fmt.Errorf("unknown format %q: want json, or none for the message alone", f)
	}
	var since stream.Position
	if v := q.Get("since"); v != "" || q.Has("since") {
		p, err := stream.ParsePosition(v)
		if err != nil {
			return opt, stream.Position{}, fmt.Errorf("malformed since %q: %w", v, err)
		}
		since, opt.json, opt.hold = p, true, true
	}
	return opt, since, nil
}

// refuse ends an unregistered connection: an optional text message, a
// close frame, a short wait for the peer's reply (closing at once could
// reset the socket and lose both frames), then the socket.
func refuse(conn *websocket.Conn, text string, code int, reason string) {
	deadline := time.Now().Add(refuseWait)
	// Write errors mean the peer is gone; closing is all that is left.
	_ = conn.SetWriteDeadline(deadline)
	if text != "" {
		_ = conn.WriteMessage(websocket.TextMessage, []byte(text))
	}
	_ = conn.WriteControl(websocket.CloseMessage, stream.AppendClosePayload(nil, code, reason), deadline)
	_ = conn.SetReadDeadline(deadline)
	for {
		if _, _, err := conn.NextReader(); err != nil {
			break
		}
	}
	_ = conn.Close()
}
