package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"go-pusher/internal/sendreq"
	"go-pusher/internal/stream"
	"go-pusher/message"
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
}

// headers sets the headers of rep with set, whichever front's it is.
func (rep reply) headers(set func(key, value string)) {
	switch {
	case rep.allow:
		set("Allow", http.MethodPost)
	case rep.challenge:
		set("WWW-Authenticate", `Bearer realm="go-pusher"`)
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
// is when the request arrived.
func (s *Server) send(ctx context.Context, accepted time.Time, contentType, rawQuery string, body []byte) reply {
	req, perr := sendreq.Parse(contentType, rawQuery, body, s.limits)
	if perr != nil {
		return textReply(perr.Status, perr.Reason)
	}
	if !s.enter() {
		return textReply(http.StatusServiceUnavailable, "server shutting down")
	}
	defer s.leave()

	online, notFound, err := s.broker.Online(ctx, req.UIDs)
	if err != nil {
		s.log.Warn("cluster lookup failed", "err", err)
		return textReply(http.StatusServiceUnavailable, "cluster unavailable: the message was not sent")
	}
	if !req.Multicast && len(online) == 0 {
		return textReply(http.StatusNotFound, "client not found: "+req.UIDs[0])
	}

	m := stream.NewMessage(s.ids.Next(accepted), StringToBytes(req.Message), accepted)
	if len(online) > 0 {
		// The log bounds the wait itself (-message-log-timeout).
		if err := s.msgLog.Log(ctx, message.Log{ID: m.ID, UIDs: online, Message: req.Message, Time: accepted}); err != nil {
			s.log.Warn("message log failed", "id", m.ID, "err", err)
			return textReply(http.StatusServiceUnavailable, "message log unavailable: the message was not sent")
		}
		// The broker bounds the publish itself; a client that hangs up
		// must not cut it in half.
		gone, err := s.broker.Publish(context.WithoutCancel(ctx), m, online)
		if err != nil {
			// Redis may have run some publishes before it failed to answer:
			// the outcome is unknown, so the log rows stay queued.
			s.log.Warn("publish failed", "id", m.ID, "err", err)
			return textReply(http.StatusServiceUnavailable, "cluster unavailable: the message may not have been delivered")
		}
		if len(gone) > 0 {
			// Went away between the lookup and the publish: nobody will
			// get it, and nothing was stored for them.
			for _, uid := range gone {
				s.msgLog.Update(m.ID, uid, message.StatusFailed)
			}
			if !req.Multicast {
				return textReply(http.StatusNotFound, "client not found: "+req.UIDs[0])
			}
			online, notFound = moveGone(online, notFound, gone)
		}
	}

	if !req.Multicast {
		return reply{status: http.StatusOK, json: true, body: `{"id":"` + m.ID + "\"}\n"}
	}
	if online == nil {
		online = []string{}
	}
	if notFound == nil {
		notFound = []string{}
	}
	b, err := json.Marshal(struct {
		ID       string   `json:"id"`
		Sent     []string `json:"sent"`
		NotFound []string `json:"not_found"`
	}{m.ID, online, notFound})
	if err != nil {
		// Strings always marshal; this is unreachable.
		return textReply(http.StatusInternalServerError, "encode reply: "+err.Error())
	}
	return reply{status: http.StatusOK, json: true, body: string(append(b, '\n'))}
}

// moveGone moves the uids of gone from online to offline, keeping order.
func moveGone(online, offline, gone []string) ([]string, []string) {
	g := make(map[string]bool, len(gone))
	for _, uid := range gone {
		g[uid] = true
	}
	kept := online[:0]
	for _, uid := range online {
		if g[uid] {
			offline = append(offline, uid)
		} else {
			kept = append(kept, uid)
		}
	}
	return kept, offline
}

// handleSend is POST /send on net/http.
func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rep := s.admitSend(r.Method, r.Header.Get("Authorization"))
	if rep.status == 0 {
		body, perr := readBody(w, r, s.limits.MaxBody())
		if perr != nil {
			rep = textReply(perr.Status, perr.Reason)
		} else {
			rep = s.send(r.Context(), start, r.Header.Get("Content-Type"), r.URL.RawQuery, body)
		}
	}
	writeHTTP(w, rep)
	s.countSend(rep.status, start)
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
