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

// handleOnline is POST /online.
func (s *Server) handleOnline(w http.ResponseWriter, r *http.Request) {
	body, rep := s.admitBody(w, r, s.limits.MaxBody())
	if rep.status == 0 {
		rep = s.online(r.Context(), r.Header.Get("Content-Type"), body)
	}
	writeHTTP(w, rep)
}

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
