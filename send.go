package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"go-pusher/internal/sendreq"
)

// reply is what /send (and /healthz, /readyz) answers: a status, a
// one-line text or a JSON body ending in a newline, and the headers a
// refusal carries. Each front writes it its own way.
type reply struct {
	status    int
	body      string
	json      bool
	allow     bool // 405: Allow: POST
	challenge bool // 401: WWW-Authenticate
	replayed  bool // Idempotent-Replayed: true
}

// headers sets the headers of rep with set, whichever front's it is.
func (rep reply) headers(set func(key, value string)) {
	switch {
	case rep.allow:
		set("Allow", http.MethodPost)
	case rep.challenge:
		set("WWW-Authenticate", `Bearer realm="go-pusher"`)
	}
	if rep.replayed {
		set("Idempotent-Replayed", "true")
	}
	if rep.json {
		set("Content-Type", "application/json")
	} else {
		set("Content-Type", "text/plain; charset=utf-8")
		set("X-Content-Type-Options", "nosniff")
	}
}

func textReply(status int, text string) reply {
	return reply{status: status, body: text + "\n"}
}

// admitSend is the part of /send that needs no body: the method and the
// API key. A zero status admits the request.
func (s *Server) admitSend(method, authorization string) reply {
	if method != http.MethodPost {
		r := textReply(http.StatusMethodNotAllowed, "method not allowed: use POST")
		r.allow = true
		return r
	}
	if !s.checkAPIKey(authorization) {
		r := textReply(http.StatusUnauthorized, "missing or wrong API key: send Authorization: Bearer <PUSHER_API_KEY>")
		r.challenge = true
		return r
	}
	return reply{}
}

// send is /send after admitSend, on the plain values of the request: it
// parses, looks the uids up, logs the message and publishes it. accepted
// is when the request arrived; key is the Idempotency-Key header (hasKey:
// it was given, perhaps empty).
func (s *Server) send(ctx context.Context, accepted time.Time, contentType, rawQuery string, body []byte, key string, hasKey bool) reply {
	req, perr := sendreq.Parse(contentType, rawQuery, body, s.limits)
	if perr == nil && hasKey {
		perr = sendreq.CheckKey(key)
	}
	if perr != nil {
		return textReply(perr.Status, perr.Reason)
	}
	j := &job{req: req, key: key}
	if fail := s.push(ctx, accepted, []*job{j}); fail != nil {
		return *fail
	}
	if j.res.status != http.StatusOK {
		return textReply(j.res.status, j.res.body)
	}
	return reply{status: http.StatusOK, json: true, body: j.res.answer() + "\n", replayed: j.res.replayed}
}

// sendBatch is /send/batch after admitSend: every message is checked
// before any is sent, and each gets its result.
func (s *Server) sendBatch(ctx context.Context, accepted time.Time, contentType string, body []byte) reply {
	items, perr := sendreq.ParseBatch(contentType, body, s.limits)
	if perr != nil {
		return textReply(perr.Status, perr.Reason)
	}
	all := make([]job, len(items))
	jobs := make([]*job, len(items))
	for i, it := range items {
		all[i] = job{req: it.Request, key: it.Key}
		jobs[i] = &all[i]
	}
	if fail := s.push(ctx, accepted, jobs); fail != nil {
		return *fail
	}
	s.metrics.batchItems.Add(float64(len(jobs)))
	return batchReply(jobs)
}

// handleSend is POST /send on net/http.
func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, rep := s.admitBody(w, r, s.limits.MaxBody())
	if rep.status == 0 {
		key, hasKey := idempotencyKey(r.Header)
		rep = s.send(r.Context(), start, r.Header.Get("Content-Type"), r.URL.RawQuery, body, key, hasKey)
	}
	writeHTTP(w, rep)
	s.countSend(rep.status, start)
}

// admitBody is what every POST of the API does first on net/http: the
// method, the API key, and the body, at most limit bytes. A reply with a
// status refuses the request.
func (s *Server) admitBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, reply) {
	rep := s.admitSend(r.Method, r.Header.Get("Authorization"))
	if rep.status != 0 {
		return nil, rep
	}
	body, perr := readBody(w, r, limit)
	if perr != nil {
		return nil, textReply(perr.Status, perr.Reason)
	}
	return body, reply{}
}

// idempotencyKey reads the Idempotency-Key header. Given twice, it is
// reported given and empty, which CheckKey refuses.
func idempotencyKey(h http.Header) (string, bool) {
	vs := h.Values("Idempotency-Key")
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return "", true
}

// handleBatch is POST /send/batch on net/http.
func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, rep := s.admitBody(w, r, s.limits.MaxBatchBytes)
	if rep.status == 0 {
		rep = s.sendBatch(r.Context(), start, r.Header.Get("Content-Type"), body)
	}
	writeHTTP(w, rep)
	s.metrics.batchCounter(rep.status).Inc()
}

// writeHTTP writes rep on net/http (/send's answers and the one-line
// answers of /healthz and /readyz).
func writeHTTP(w http.ResponseWriter, rep reply) {
	rep.headers(w.Header().Set)
	w.WriteHeader(rep.status)
	// A write error means the client left; there is no one to tell.
	_, _ = io.WriteString(w, rep.body)
}

// countSend records a /send answered with status, on either front.
func (s *Server) countSend(status int, start time.Time) {
	s.metrics.sendCounter(status).Inc()
	s.metrics.sendDuration.Observe(time.Since(start).Seconds())
}

// maxBodyPrealloc caps the buffer sized from Content-Length: a client may
// announce a large body and send nothing, and must not make us allocate it.
const maxBodyPrealloc = 64 << 10

// readBody reads r's body, at most limit bytes, into a buffer sized from
// the announced length, so that a typical body takes one allocation.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *sendreq.Error) {
	if r.ContentLength > limit {
		// Refused unread: the connection closes after the answer, rather
		// than net/http reading the body to keep it.
		w.Header().Set("Connection", "close")
		return nil, sendreq.TooLarge(limit)
	}
	n := 512
	if r.ContentLength >= 0 && r.ContentLength < maxBodyPrealloc {
		n = int(r.ContentLength) + 1 // +1: room to read the EOF without growing
	}
	b := make([]byte, 0, n)
	body := http.MaxBytesReader(w, r.Body, limit)
	for {
		m, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
			return nil, sendreq.TooLarge(limit)
		}
		if err != nil {
			return nil, &sendreq.Error{Status: http.StatusBadRequest, Reason: "read body: " + err.Error()}
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}
