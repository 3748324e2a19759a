package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	limit := s.limits.MaxBody()
	return fastFront{&fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			defer s.recoverFast(ctx)
			if string(ctx.Path()) == "/send" {
				s.fastSend(ctx)
				return
			}
			other(ctx)
		},
		// Called when a request cannot be read whole (a body over the
		// limit, a broken one). For /send the method and the API key are
		// checked first and the answer is counted, as on net/http.
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			start := time.Now()
			rep := textReply(http.StatusBadRequest, "malformed request")
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				tooBig := sendreq.TooLarge(limit)
				rep = textReply(tooBig.Status, tooBig.Reason)
			}
			if string(ctx.Path()) != "/send" {
				writeFast(ctx, rep)
				return
			}
			if admitted := s.admitSend(string(ctx.Method()), string(ctx.Request.Header.Peek("Authorization"))); admitted.status != 0 {
				rep = admitted
			}
			writeFast(ctx, rep)
			s.countSend(rep.status, start)
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

// fastSend is POST /send on fasthttp.
func (s *Server) fastSend(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	rep := s.admitSend(BytesToString(ctx.Method()), BytesToString(ctx.Request.Header.Peek("Authorization")))
	if rep.status == 0 {
		// The header and body buffers are fasthttp's, reused by the
		// connection's next request. The content type is only compared
		// and the parser copies what it keeps of the body (a string of
		// the form, JSON decoding), but url.ParseQuery returns pieces of
		// its input: the query is copied, or a queued message and the
		// history's keys would point into the next request.
		query := string(ctx.URI().QueryString())
		rep = s.send(ctx, start, BytesToString(ctx.Request.Header.ContentType()), query, ctx.PostBody())
	}
	writeFast(ctx, rep)
	s.countSend(rep.status, start)
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
