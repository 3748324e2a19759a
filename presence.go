package main

import (
	"context"
	"errors"
	"net/http"

	"go-pusher/internal/cluster"
	"go-pusher/internal/sendreq"
)

// This file is presence: POST /online answers which uids have an open
// connection on some node.

// handleAPI is a POST of the API on net/http that f answers from its
// content type and body, after admitBody.
func (s *Server) handleAPI(f func(ctx context.Context, contentType string, body []byte) reply) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, rep := s.admitBody(w, r, s.limits.MaxBody())
		if rep.status == 0 {
			rep = f(r.Context(), r.Header.Get("Content-Type"), body)
		}
		writeHTTP(w, rep)
	}
}

// online is POST /online.
func (s *Server) online(ctx context.Context, contentType string, body []byte) reply {
	uids, perr := sendreq.ParseOnline(contentType, body, s.limits)
	if perr != nil {
		return textReply(perr.Status, perr.Reason)
	}
	online, offline, err := s.broker.Online(ctx, uids)
	switch {
	case errors.Is(err, cluster.ErrResyncing):
		return textReply(http.StatusServiceUnavailable, "cluster resubscribing after a Redis outage: presence not known yet; retry")
	case err != nil:
		s.log.Warn("online lookup failed", "uids", len(uids), "err", err)
		return textReply(http.StatusServiceUnavailable, "cluster unavailable: presence not known")
	}
	b := append([]byte(nil), `{"online":`...)
	b = appendUIDs(b, online)
	b = append(b, `,"offline":`...)
	b = appendUIDs(b, offline)
	b = append(b, '}')
	return reply{status: http.StatusOK, body: string(b) + "\n", json: true}
}
