package main

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/cluster"
	"go-pusher/internal/revoke"
	"go-pusher/internal/sendreq"
	"go-pusher/internal/stream"
)

// This file is session control: POST /disconnect closes a uid's
// connections on every node with 1008 and a reason, and with "revoke"
// refuses its tokens issued until then, at connect and at refresh, for
// -revoke-ttl.

// revocations remembers revoked tokens: in memory on a single node
// (localRevocations), in Redis in cluster mode (cluster.Broker).
type revocations interface {
	Revoke(ctx context.Context, uids []string, at time.Time, ttl time.Duration) error
	RevokedAt(ctx context.Context, uid string) (time.Time, bool, error)
}

// localRevocations are a single node's.
type localRevocations struct{ m *revoke.Memory }

func (l localRevocations) Revoke(_ context.Context, uids []string, at time.Time, _ time.Duration) error {
	l.m.Revoke(uids, at)
	return nil
}

func (l localRevocations) RevokedAt(_ context.Context, uid string) (time.Time, bool, error) {
	t, ok := l.m.RevokedAt(uid)
	return t, ok, nil
}

// errRevoked is the refusal of a revoked token.
var errRevoked = &authError{authInvalidToken, "token revoked"}

// checkRevoked refuses id when its uid's tokens were revoked at or after
// its iat. A revocation store that does not answer lets the token in
// (the server log says so): a Redis outage must not lock every user out.
func (s *Server) checkRevoked(ctx context.Context, id Identity) error {
	at, ok, err := s.revoked.RevokedAt(ctx, id.UID)
	if err != nil {
		s.log.Warn("revocation check failed: token let in", "uid", id.UID, "err", err)
		return nil
	}
	if ok && revoke.Refuses(at, id.IssuedAt) {
		return errRevoked
	}
	return nil
}

// recheckRevoked closes c if its token was revoked while it connected. A
// /disconnect with revoke writes the revocation, then closes the uid's
// connections that some node's subscription shows: a connection checked
// before the revocation and subscribed after that lookup would escape
// both. So, once its subscription is in place (cluster mode; at once on
// one node), the connection's token is checked again.
func (s *Server) recheckRevoked(ctx context.Context, c *Client, id Identity) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.MessageLogTimeout)
	defer cancel()
	if err := s.broker.Subscribed(ctx, id.UID); err != nil {
		s.log.Debug("revocation recheck: subscription not confirmed", "uid", id.UID, "err", err)
	}
	if s.checkRevoked(ctx, id) != nil {
		c.close(websocket.ClosePolicyViolation, "token revoked", failClosed, false)
	}
}

// tokenChecker checks the token of an in-band refresh as at connect:
// signature and claims, then revocation.
type tokenChecker struct{ s *Server }

func (c tokenChecker) ParseToken(token string) (Identity, error) {
	id, err := c.s.jwt.ParseToken(token)
	if err != nil {
		return id, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.MessageLogTimeout)
	defer cancel()
	return id, c.s.checkRevoked(ctx, id)
}

// Disconnect closes uid's connections here with 1008 and reason. It never
// blocks (cluster.Local).
func (h *Hub) Disconnect(uid, reason string) {
	n := 0
	for _, c := range h.clients(uid) {
		if c.close(websocket.ClosePolicyViolation, reason, failClosed, false) {
			n++
		}
	}
	h.metrics.disconnects.Add(float64(n))
}

// disconnect is POST /disconnect: it revokes (when asked) and then closes the connections of the
// uids of body, on every node.
func (s *Server) disconnect(ctx context.Context, contentType string, body []byte) reply {
	d, perr := sendreq.ParseDisconnect(contentType, body, s.limits)
	if perr != nil {
		return textReply(perr.Status, perr.Reason)
	}
	if d.Revoke {
		// First, so that a connection closed below cannot come back with
		// its old token.
		if err := s.revoked.Revoke(ctx, d.UIDs, time.Now(), s.cfg.RevokeTTL); err != nil {
			s.log.Warn("revoke failed", "uids", len(d.UIDs), "err", err)
			return textReply(http.StatusServiceUnavailable, "cluster unavailable: nothing was revoked or disconnected")
		}
	}
	gone, notFound, err := s.broker.Disconnect(ctx, d.UIDs, d.Reason)
	if errors.Is(err, cluster.ErrResyncing) {
		return textReply(http.StatusServiceUnavailable, "cluster resubscribing after a Redis outage: nothing was disconnected; retry")
	}
	if err != nil {
		s.log.Warn("disconnect failed", "uids", len(d.UIDs), "err", err)
		return textReply(http.StatusServiceUnavailable, "cluster unavailable: the connections may not have been closed")
	}
	s.log.Info("disconnect", "uids", len(d.UIDs), "disconnected", len(gone), "revoke", d.Revoke)
	b := append([]byte(nil), `{"disconnected":`...)
	b = appendUIDs(b, gone)
	b = append(b, `,"not_found":`...)
	b = appendUIDs(b, notFound)
	b = append(b, '}')
	return reply{status: http.StatusOK, body: string(b) + "\n", json: true}
}

// appendUIDs appends uids as a JSON array.
func appendUIDs(b []byte, uids []string) []byte {
	b = append(b, '[')
	for i, uid := range uids {
		if i > 0 {
			b = append(b, ',')
		}
		b = stream.AppendJSONString(b, uid)
	}
	return append(b, ']')
}
