package main

import (
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"go-pusher/internal/stream"
)

// This file is the in-band token refresh of format=json connections: the
// client sends {"refresh": "<JWT>"} before its token expires; the new
// token is checked as at connect, must name the same uid, and moves the
// connection's expiry to its exp. The answer is {"refreshed": true,
// "exp": <unix seconds or null>}, or {"refreshed": false, "error":
// "<reason>"} with the old expiry standing. Other client frames are read
// and ignored, as on raw connections.

// tokenParser checks a token as at connect (JWTAuthenticator).
type tokenParser interface {
	ParseToken(token string) (Identity, error)
}

// refreshFrame is what a client may send: only "refresh" means anything.
type refreshFrame struct {
	Refresh json.RawMessage `json:"refresh"`
}

// consumeJSON reads a format=json client's message (up to 8 KiB), acts
// on a refresh, and reports whether the connection goes on.
//
//go:noinline
func (c *Client) consumeJSON(r io.Reader) bool {
	data, err := io.ReadAll(io.LimitReader(r, maxJSONReadSize+1))
	if len(data) > maxJSONReadSize {
		c.close(websocket.CloseMessageTooBig, "message too big", failClosed, false)
		return true // until the peer's close, or closeGrace
	}
	if err != nil {
		c.readFailed(err)
		return false
	}
	c.extendDeadline()
	var f refreshFrame
	if json.Unmarshal(data, &f) != nil || f.Refresh == nil {
		return true // not a refresh: ignored, as every client frame was
	}
	var token string
	if err := json.Unmarshal(f.Refresh, &token); err != nil {
		c.replyRefresh(time.Time{}, errors.New("refresh: want the token as a string"))
		return true
	}
	c.replyRefresh(c.refresh(token))
	return true
}

// refresh checks token and moves the connection's expiry to its exp.
func (c *Client) refresh(token string) (time.Time, error) {
	if c.hub.tokens == nil {
		return time.Time{}, errors.New("refresh is not available")
	}
	id, err := c.hub.tokens.ParseToken(token)
	if err != nil {
		return time.Time{}, err
	}
	if id.UID != c.uid {
		return time.Time{}, errors.New("token is for another uid")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() != stateOpen {
		return time.Time{}, errors.New("connection is closing")
	}
	if c.expTimer != nil {
		c.expTimer.Stop()
		c.expTimer = nil
	}
	c.expiresAt = id.ExpiresAt
	if !id.ExpiresAt.IsZero() {
		c.expTimer = time.AfterFunc(time.Until(id.ExpiresAt), c.expire)
	}
	return id.ExpiresAt, nil
}

// replyRefresh queues the answer to a refresh.
func (c *Client) replyRefresh(exp time.Time, err error) {
	var b []byte
	switch {
	case err != nil:
		b = append(b, `{"refreshed":false,"error":`...)
		b = stream.AppendJSONString(b, err.Error())
		b = append(b, '}')
	case exp.IsZero():
		b = append(b, `{"refreshed":true,"exp":null}`...)
	default:
		b = append(b, `{"refreshed":true,"exp":`...)
		b = strconv.AppendInt(b, exp.Unix(), 10)
		b = append(b, '}')
	}
	c.enqueue(stream.Item{M: stream.NewMessage("", b, time.Time{}), Ctl: true})
}
