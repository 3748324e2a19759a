package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"go-pusher/internal/sendreq"
)

// The internal listener (-internal-addr) is where backends post /send at
// their rate, so its per-request cost matters: it is served by fasthttp,
// which reads a request into reused buffers where net/http builds a
// Request, a header map and a goroutine-held bufio pair per request (see
// docs/performance.md for the pair measured). /send is answered natively,
// by the same core as on net/http (admitSend, send) fed with the request's
// plain values; /metrics, /healthz, /readyz and pprof go through
// fasthttpadaptor to their net/http handlers, which is fine at their rate.

// fastFront serves the internal listener.
type fastFront struct {
	srv *fasthttp.Server
}

func (f fastFront) Serve(ln net.Listener) error { return f.srv.Serve(ln) }

// Shutdown stops accepting and waits for the requests under way; at ctx's
// end it closes what is left.
func (f fastFront) Shutdown(ctx context.Context) error {
	return f.srv.ShutdownWithContext(ctx)
}

// newFastFront returns the internal listener's server: /send on fasthttp,
// everything else of ops through the adaptor.
func (s *Server) newFastFront(ops http.Handler) fastFront {
	other := fasthttpadaptor.NewFastHTTPHandler(ops)
	limit := max(s.limits.MaxBody(), s.limits.MaxBatchBytes)
	return fastFront{&fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			defer s.recoverFast(ctx)
			switch string(ctx.Path()) {
			case "/send":
				s.fastSend(ctx)
				return
			case "/send/batch":
				s.fastBatch(ctx)
				return
			}
			other(ctx)
		},
		// Called when a request cannot be read whole (a body over the
		// limit, a broken one). For /send the method and the API key are
		// checked first and the answer is counted, as on net/http.
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			start := time.Now()
			path := string(ctx.Path())
			rep := textReply(http.StatusBadRequest, "malformed request")
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				tooBig := sendreq.TooLarge(s.bodyLimit(path))
				rep = textReply(tooBig.Status, tooBig.Reason)
			}
			if path != "/send" && path != "/send/batch" {
				writeFast(ctx, rep)
				return
			}
			if admitted := s.admitSend(string(ctx.Method()), string(ctx.Request.Header.Peek("Authorization"))); admitted.status != 0 {
				rep = admitted
			}
			writeFast(ctx, rep)
			s.countFast(path, rep.status, start)
		},
		// Each path has its own body limit: a /send body over /send's is
		// refused unread, not read up to /send/batch's.
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			// The raw path: routing sees it normalized (//send is /send),
			// so only the exact /send gets the smaller limit here, and the
			// handler checks the limit of the path it routes to.
			path, _, _ := strings.Cut(BytesToString(h.RequestURI()), "?")
			if path == "/send" {
				return fasthttp.RequestConfig{MaxRequestBodySize: int(s.limits.MaxBody())}
			}
			return fasthttp.RequestConfig{}
		},
		// /send parses multipart bodies itself (sendreq); fasthttp's own
		// parsing would hand it a re-encoded copy and answer malformed
		// ones in its own words.
		DisablePreParseMultipartForm: true,
		MaxRequestBodySize:           int(limit),
		ReadTimeout:                  30 * time.Second,
		WriteTimeout:                 s.cfg.WriteTimeout,
		IdleTimeout:                  idleTimeout,
		ReadBufferSize:               8 << 10,
		NoDefaultServerHeader:        true,
		Logger:                       fastLogger{s.log},
	}}
}

// bodyLimit is the largest body of a request to path.
func (s *Server) bodyLimit(path string) int64 {
	if path == "/send/batch" {
		return s.limits.MaxBatchBytes
	}
	return s.limits.MaxBody()
}

// countFast counts a request to path, /send or /send/batch.
func (s *Server) countFast(path string, status int, start time.Time) {
	if path == "/send/batch" {
		s.metrics.batchCounter(status).Inc()
		return
	}
	s.countSend(status, start)
}

// fastAdmit is admitSend on fasthttp, and the body limit of path: fasthttp
// reads bodies up to the larger of the two limits.
func (s *Server) fastAdmit(ctx *fasthttp.RequestCtx, path string) reply {
	rep := s.admitSend(BytesToString(ctx.Method()), BytesToString(ctx.Request.Header.Peek("Authorization")))
	if rep.status == 0 && int64(len(ctx.PostBody())) > s.bodyLimit(path) {
		tooBig := sendreq.TooLarge(s.bodyLimit(path))
		rep = textReply(tooBig.Status, tooBig.Reason)
	}
	return rep
}

// fastSend is POST /send on fasthttp.
func (s *Server) fastSend(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	rep := s.fastAdmit(ctx, "/send")
	if rep.status == 0 {
		// The header and body buffers are fasthttp's, reused by the
		// connection's next request. The content type is only compared
		// and the parser copies what it keeps of the body (a string of
		// the form, JSON decoding), but url.ParseQuery returns pieces of
		// its input: the query is copied, or a queued message and the
		// history's keys would point into the next request.
		// The key is copied: a remembered answer outlives the request.
		query := string(ctx.URI().QueryString())
		key, hasKey := fastIdempotencyKey(&ctx.Request.Header)
		rep = s.send(ctx, start, BytesToString(ctx.Request.Header.ContentType()), query, ctx.PostBody(), key, hasKey)
	}
	writeFast(ctx, rep)
	s.countSend(rep.status, start)
}

// fastIdempotencyKey reads the Idempotency-Key header as idempotencyKey
// does, copied.
func fastIdempotencyKey(h *fasthttp.RequestHeader) (string, bool) {
	vs := h.PeekAll("Idempotency-Key")
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return string(vs[0]), true
	}
	return "", true
}

// fastBatch is POST /send/batch on fasthttp.
func (s *Server) fastBatch(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	rep := s.fastAdmit(ctx, "/send/batch")
	if rep.status == 0 {
		rep = s.sendBatch(ctx, start, BytesToString(ctx.Request.Header.ContentType()), ctx.PostBody())
	}
	writeFast(ctx, rep)
	s.metrics.batchCounter(rep.status).Inc()
}

// writeFast writes rep as handleSend writes it on net/http.
func writeFast(ctx *fasthttp.RequestCtx, rep reply) {
	rep.headers(ctx.Response.Header.Set)
	ctx.SetStatusCode(rep.status)
	ctx.SetBodyString(rep.body)
}

// recoverFast answers 500 for a handler that panicked and logs it:
// fasthttp, unlike net/http, lets a panic end the process.
func (s *Server) recoverFast(ctx *fasthttp.RequestCtx) {
	if v := recover(); v != nil {
		s.log.Error("handler panicked", "path", string(ctx.Path()), "panic", fmt.Sprint(v))
		ctx.ResetBody()
		writeFast(ctx, textReply(http.StatusInternalServerError, "internal error"))
	}
}

// fastLogger takes fasthttp's own log lines into the server's log.
type fastLogger struct{ log *slog.Logger }

func (l fastLogger) Printf(format string, args ...any) {
	l.log.Warn("fasthttp: "+fmt.Sprintf(format, args...), "source", "fasthttp")
}
