package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// fastLane serves plain POST /send requests itself and hands every other
// connection to net/http. Behind net/http a unicast /send cost a third
// more CPU (its request parsing into maps, a context and a background
// read goroutine per request, the header clone of every answer; 2.8 KB
// allocated a request, against a few hundred bytes here).
// The lane takes only
// the common case, and only when it is sure: a connection whose first
// bytes (peeked, not read: MSG_PEEK) are not "POST /send" goes to
// net/http untouched, and a request the lane does not fully understand
// (another path or version, Transfer-Encoding, Expect, a header it
// cannot vouch for, no Content-Length, a head over laneHeadMax bytes)
// goes to net/http with the bytes read so far, before any of it is
// consumed: net/http then answers it, refusals included, as it always
// did. The lane calls the same handler (handleSend) with a request built
// from the parsed head, so every answer and metric is the same.
type fastLane struct {
	s       *Server
	ln      net.Listener
	handoff chan net.Conn // to net/http's Accept
	failed  chan error    // the listener's last error
	closed  chan struct{}
	once    sync.Once

	laneLimits

	// ctx is every request's context; cancel ends it when shutdown runs
	// out of time, as net/http's ends when it closes the connections.
	ctx    context.Context
	cancel context.CancelFunc

	served atomic.Uint64 // requests the lane answered

	mu    sync.Mutex
	conns map[net.Conn]bool // true while waiting for a request
	wg    sync.WaitGroup    // the accept loop and every serving goroutine
	date  laneDate
}

// laneHeadMax bounds the request head the lane reads; a longer one
// (large cookies, say) goes to net/http, which allows MaxHeaderBytes.
const laneHeadMax = 4096

// laneDiscardMax is the most of an unread body (a refused /send) the
// lane reads past to keep the connection, as net/http does (256 KiB).
const laneDiscardMax = 256 << 10

// laneKeepOut bounds the answer buffer a connection keeps between
// requests.
const laneKeepOut = 64 << 10

// laneBodyTimeout bounds reading a /send body the lane answers
// (net/http, with no ReadTimeout set, waits as long as the client).
const laneBodyTimeout = 30 * time.Second

// laneLimits bound a lane connection, as net/http's limits do on the
// same listener.
type laneLimits struct {
	headerTimeout time.Duration // from the first byte of a request to its blank line
	bodyTimeout   time.Duration // reading the body
	idleTimeout   time.Duration // between requests
	writeTimeout  time.Duration // the answer
	maxBody       int64         // a longer Content-Length goes to net/http (413)
}

// laneLimitsOf returns the lane's limits for s.
func laneLimitsOf(s *Server) laneLimits {
	return laneLimits{headerTimeout: readHeaderTimeout, bodyTimeout: laneBodyTimeout, idleTimeout: idleTimeout,
		writeTimeout: s.cfg.WriteTimeout, maxBody: s.limits.maxBody()}
}

// newFastLane returns a lane for ln; start serves it until Close, and
// wait waits for its goroutines.
func newFastLane(s *Server, ln net.Listener, lim laneLimits) *fastLane {
	f := &fastLane{s: s, ln: ln, handoff: make(chan net.Conn), failed: make(chan error, 1), closed: make(chan struct{}),
		laneLimits: lim, conns: map[net.Conn]bool{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// start accepts connections until Close.
func (f *fastLane) start() {
	f.wg.Add(1)
	go f.acceptLoop()
}

// acceptLoop accepts until the listener is closed, retrying temporary
// failures (too many open files) as net/http does.
func (f *fastLane) acceptLoop() {
	defer f.wg.Done()
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Temporary() { //nolint:staticcheck // as net/http's Serve
				f.failed <- err // net/http's Serve returns it: the server stops
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			f.s.log.Warn("accept failed; retrying", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-f.closed:
				f.failed <- net.ErrClosed
				return
			}
		}
		delay = 0
		if !f.setIdle(c, true) {
			c.Close()
			continue
		}
		f.wg.Add(1)
		go f.serve(c)
	}
}

// Accept gives net/http the connections the lane hands over.
func (f *fastLane) Accept() (net.Conn, error) {
	select {
	case c := <-f.handoff:
		if f.isClosed() {
			// Shutdown has looked at net/http's connections already.
			c.Close()
			return nil, net.ErrClosed
		}
		return c, nil
	case err := <-f.failed:
		f.failed <- err // for the next call
		return nil, err
	case <-f.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and closes the lane's connections that wait for
// a request; one in the middle of a request closes after its answer.
func (f *fastLane) Close() error {
	f.once.Do(func() {
		close(f.closed)
		f.mu.Lock()
		for c, idle := range f.conns {
			if idle {
				c.Close()
			}
		}
		f.mu.Unlock()
	})
	return f.ln.Close()
}

func (f *fastLane) Addr() net.Addr { return f.ln.Addr() }

// wait waits for the lane's goroutines after Close, closing every
// connection when ctx ends first.
func (f *fastLane) wait(ctx context.Context) {
	_ = f.Close() // if net/http's Shutdown has not (its Serve had not started)
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	defer f.cancel()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	f.cancel()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	// A handler stuck where no context reaches (a log write to a hung
	// disk) must not hold the shutdown: net/http's Close does not wait
	// for handlers either.
	select {
	case <-done:
	case <-time.After(laneStragglerWait):
		f.s.log.Warn("shutdown: /send requests on the fast lane still running", "connections", f.open())
	}
}

// laneStragglerWait is how long wait gives handlers after cancelling
// their context at the shutdown deadline.
const laneStragglerWait = time.Second

// setIdle marks c as waiting for a request (true) or busy, adding it
// if new; false when the lane is closed and c should close.
func (f *fastLane) setIdle(c net.Conn, idle bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isClosed() {
		return false
	}
	f.conns[c] = idle
	return true
}

// isClosed reports whether Close was called: answers say Connection:
// close, as net/http's do during a shutdown.
func (f *fastLane) isClosed() bool {
	select {
	case <-f.closed:
		return true
	default:
		return false
	}
}

// open returns the number of connections the lane holds.
func (f *fastLane) open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *fastLane) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// serve answers the plain POST /send requests of c until it closes or
// sends something else, which goes to net/http.
func (f *fastLane) serve(c net.Conn) {
	defer f.wg.Done()
	handedOver := false
	defer func() {
		if v := recover(); v != nil && v != http.ErrAbortHandler {
			// As net/http: the connection closes, the server goes on.
			f.s.log.Error("panic serving /send", "panic", v, "stack", string(debug.Stack()))
		}
		if !handedOver {
			f.untrack(c)
			c.Close()
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(f.headerTimeout))
	switch peekSend(c) {
	case laneHandOver:
		handedOver = true
		f.handOver(c, nil)
		return
	case laneDrop:
		return
	}
	br := bufio.NewReaderSize(c, laneHeadMax)
	lr := f.newLaneRequest(br)
	var out []byte
	for first := true; ; first = false {
		if !first {
			_ = c.SetReadDeadline(time.Now().Add(f.idleTimeout))
			if _, err := br.Peek(1); err != nil {
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(f.headerTimeout))
		}
		if !f.setIdle(c, false) {
			return
		}
		// A head handed over after a slow start gets net/http's own
		// header timeout afresh: at most twice readHeaderTimeout in all.
		head, verdict := readHead(br)
		if verdict == laneServe && head.contentLength > f.maxBody {
			verdict = laneHandOver // net/http answers 413 as before
		}
		switch verdict {
		case laneHandOver:
			handedOver = true
			f.handOver(c, br)
			return
		case laneDrop:
			return
		}
		_, _ = br.Discard(head.size)
		_ = c.SetReadDeadline(time.Now().Add(f.bodyTimeout))
		if cap(out) > laneKeepOut {
			out = nil // a large multicast answer's buffers are not kept while idle
			lr.w.body = nil
		}
		out, head.close = f.answer(out[:0], &head, lr)
		f.served.Add(1)
		_ = c.SetWriteDeadline(time.Now().Add(f.writeTimeout))
		if _, err := c.Write(out); err != nil {
			return
		}
		if head.close {
			if lr.body.N > 0 {
				linger(c) // the client may still be sending the body
			}
			return
		}
		if !f.setIdle(c, true) {
			return
		}
	}
}

// linger half-closes c and reads what the client still sends for a
// while before the caller closes it, as net/http does: closing a socket
// with unread bytes resets it, and a reset can destroy the answer before
// the client reads it.
func linger(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, c)
}

// lingerTime is net/http's rstAvoidanceDelay.
const lingerTime = 500 * time.Millisecond

// handOver gives c to net/http, with what br read of it ahead.
func (f *fastLane) handOver(c net.Conn, br *bufio.Reader) {
	f.untrack(c)
	_ = c.SetDeadline(time.Time{}) // net/http sets its own
	if br != nil && br.Buffered() > 0 {
		c = &prefixConn{Conn: c, r: br}
	}
	select {
	case f.handoff <- c:
	case <-f.closed:
		c.Close()
	}
}

// prefixConn is a connection whose first bytes were read ahead into r.
type prefixConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if p.r != nil {
		if p.r.Buffered() > 0 {
			return p.r.Read(b)
		}
		p.r = nil // drained: let its buffer go
	}
	return p.Conn.Read(b)
}

// CloseWrite lets net/http send its FIN before closing, as on a TCPConn.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SyscallConn gives the socket for writes in place (a /ws upgrade after
// a /send on one connection); its reads would skip r, and nothing reads
// through it.
func (p *prefixConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := p.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}
