package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// With -target centrifugo the tool runs idle and send against Centrifugo
// v6 (docs/centrifugo-bench.md), so that go-pusher and Centrifugo are
// measured by one tool with the same checks. A user's connections speak
// Centrifugo's JSON protocol on /connection/websocket: a connect command
// with the token (claim sub), whose reply lists the user's personal
// channel, subscribed by the server (client.subscribe_to_user_personal_
// channel); then pushes of that channel's publications, whose data is the
// tool's message as a JSON string, and pings ({}), each answered with {}
// when the reply asks for pongs (Centrifugo closes a connection that does
// not answer). Messages go out as POST /api/publish with X-API-Key.

// The targets.
const (
	targetGoPusher   = "go-pusher"
	targetCentrifugo = "centrifugo"
)

// Centrifugo's default endpoints (websocket.handler_prefix,
// http_api.handler_prefix).
const (
	centrifugoWSPath      = "/connection/websocket"
	centrifugoPublishPath = "/api/publish"
)

// cfConnectID is the id of the connect command, the only command the
// tool sends that has a reply.
const cfConnectID = 1

// cfPing is a ping, and the pong that answers it: an empty command.
const cfPing = "{}"

// centrifugo reports whether the run targets Centrifugo.
func (e *Engine) centrifugo() bool { return e.Target == targetCentrifugo }

// personalChannel is Centrifugo's name of uid's personal channel in
// namespace: <namespace>:#<uid>, or #<uid> without a namespace.
func personalChannel(namespace, uid string) string {
	if namespace == "" {
		return "#" + uid
	}
	return namespace + ":#" + uid
}

// validateTarget returns the problems of Target and of the settings it
// rules out.
func (e *Engine) validateTarget() []error {
	switch e.Target {
	case "", targetGoPusher:
		return nil
	case targetCentrifugo:
	default:
		return []error{fmt.Errorf("invalid -target %q: want go-pusher or centrifugo", e.Target)}
	}
	var errs []error
	if e.Scenario != scenarioIdle && e.Scenario != scenarioSend {
		errs = append(errs, fmt.Errorf("-target centrifugo runs the idle and send scenarios, not %q", e.Scenario))
	}
	if e.Form {
		errs = append(errs, errors.New("-form is go-pusher's: Centrifugo's API takes JSON"))
	}
	for _, r := range e.CentrifugoNamespace {
		// The channel goes into JSON bodies written by hand: no escapes.
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			errs = append(errs, fmt.Errorf("invalid -centrifugo-namespace %q: letters, digits, '-', '_' and '.' only", e.CentrifugoNamespace))
			break
		}
	}
	return errs
}

// cfFrame is one JSON object of what Centrifugo sends: a reply (id, with
// connect or error) or a push. A ping ({}) is told apart before decoding.
type cfFrame struct {
	ID      uint32     `json:"id"`
	Error   *cfError   `json:"error"`
	Connect *cfConnect `json:"connect"`
	Push    *cfPush    `json:"push"`
}

// cfError is a reply's error, and the error of an API answer.
type cfError struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

type cfConnect struct {
	Subs map[string]json.RawMessage `json:"subs"` // server-side subscriptions
	Pong bool                       `json:"pong"` // pings must be answered
}

type cfPush struct {
	Channel string `json:"channel"`
	Pub     *struct {
		Data string `json:"data"` // the tool publishes its message as a JSON string
	} `json:"pub"`
}

// cfHello is what the connect reply told the reader: whether to answer
// pings, and what came after the reply in its frame (the server may
// batch several objects in one frame, a line each).
type cfHello struct {
	pong bool
	rest []byte
}

// dialCentrifugo is dial for Centrifugo: the WebSocket handshake to node,
// then the connect command with user's token and its reply, under ctx.
func (p *pool) dialCentrifugo(ctx context.Context, d *websocket.Dialer, node string, user int) (*websocket.Conn, cfHello, error) {
	conn, resp, err := d.DialContext(ctx, node, nil)
	if err != nil {
		return nil, cfHello{}, handshakeError(resp, err)
	}
	hello, err := p.r.cfConnect(ctx, conn, user)
	if err != nil {
		_ = conn.Close() // refused or broken: nothing to keep
		return nil, cfHello{}, err
	}
	return conn, hello, nil
}

// cfConnect sends the connect command on conn and reads up to its reply,
// which must list user's personal channel. The connection counts as up
// only then: the reply comes once Centrifugo has registered the client
// and subscribed it, so a publish after it reaches the connection.
func (r *runner) cfConnect(ctx context.Context, conn *websocket.Conn, user int) (cfHello, error) {
	deadline, _ := ctx.Deadline() // dial's: RequestTimeout
	if err := conn.NetConn().SetDeadline(deadline); err != nil {
		return cfHello{}, errors.New(errorClass(err))
	}
	// The pool stopping ends the wait at once rather than at the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.NetConn().SetDeadline(time.Unix(1, 0)) })
	defer stop()
	// A token is base64url and dots: %q quotes it as JSON does.
	cmd := fmt.Appendf(nil, `{"id":%d,"connect":{"token":%q,"name":"pusher-bench"}}`, cfConnectID, r.tokens[user])
	if err := conn.WriteMessage(websocket.TextMessage, cmd); err != nil {
		return cfHello{}, errors.New(errorClass(err))
	}
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
				return cfHello{}, fmt.Errorf("connect: closed %d %s", ce.Code, ce.Text)
			}
			return cfHello{}, errors.New(errorClass(err))
		}
		for len(msg) > 0 {
			var line []byte
			line, msg, _ = bytes.Cut(msg, []byte("\n"))
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var f cfFrame
			switch {
			case json.Unmarshal(line, &f) != nil || f.ID != cfConnectID || f.Error == nil && f.Connect == nil:
				return cfHello{}, fmt.Errorf("connect: unexpected %q", headOf(line))
			case f.Error != nil:
				return cfHello{}, fmt.Errorf("connect: error %d %s", f.Error.Code, f.Error.Message)
			}
			if _, ok := f.Connect.Subs[r.channels[user]]; !ok {
				// Not the uid in the text: it would make every error unique.
				return cfHello{}, errors.New("connect: not subscribed to the personal channel (client.subscribe_to_user_personal_channel, -centrifugo-namespace)")
			}
			if !stop() {
				return cfHello{}, errors.New(errorClass(context.Cause(ctx)))
			}
			if err := conn.NetConn().SetDeadline(time.Time{}); err != nil {
				return cfHello{}, errors.New(errorClass(err))
			}
			return cfHello{pong: f.Connect.Pong, rest: msg}, nil
		}
	}
}

// readCentrifugo is read for Centrifugo: it reads frames until the
// connection ends, handles each line of them, and returns the close
// code the server sent (0: none) or else the class of the error.
func (p *pool) readCentrifugo(slot, gen int32, conn *websocket.Conn, hello cfHello) (int, string) {
	user := int(slot) / p.r.e.ConnsPerUser
	var buf bytes.Buffer // reused: the frames are read whole, then split
	frame, at := hello.rest, time.Now().UnixNano()
	for {
		for len(frame) > 0 {
			var line []byte
			line, frame, _ = bytes.Cut(frame, []byte("\n"))
			p.cfLine(slot, gen, conn, user, hello.pong, line, at)
		}
		_, rd, err := conn.NextReader()
		if err != nil {
			return closeOf(err)
		}
		at = time.Now().UnixNano()
		buf.Reset()
		if _, err := buf.ReadFrom(rd); err != nil {
			return closeOf(err)
		}
		frame = buf.Bytes()
	}
}

// cfLine handles one line of a frame that arrived at at: a ping is
// answered, a publication of the user's channel is reported like a
// go-pusher message, anything else is malformed.
func (p *pool) cfLine(slot, gen int32, conn *websocket.Conn, user int, pong bool, line []byte, at int64) {
	line = bytes.TrimSpace(line)
	switch {
	case len(line) == 0:
		return
	case string(line) == cfPing:
		if pong {
			// The reader is the connection's only writer of data frames
			// (the closers write control frames, which gorilla allows
			// alongside). A failed write means the connection is ending:
			// the next read says how.
			_ = conn.SetWriteDeadline(time.Now().Add(p.r.e.RequestTimeout))
			_ = conn.WriteMessage(websocket.TextMessage, []byte(cfPing))
		}
		return
	}
	var f cfFrame
	if json.Unmarshal(line, &f) != nil || f.Push == nil || f.Push.Pub == nil || f.Push.Channel != p.r.channels[user] {
		p.rep.emit(event{kind: evBad, slot: slot, gen: gen, at: at, text: string(headOf(line))})
		return
	}
	p.r.recv.Add(1)
	data := []byte(f.Push.Pub.Data)
	sender, seq, sentAt, hlen, ok := parsePayload(data)
	if !ok || len(data) != max(p.r.e.Size, hlen) {
		p.rep.emit(event{kind: evBad, slot: slot, gen: gen, at: at, text: string(headOf(data))})
		return
	}
	p.rep.emit(event{kind: evRecv, slot: slot, gen: gen, sender: sender, seq: seq, at: at, t2: sentAt})
}

// headOf is the start of b, for a report.
func headOf(b []byte) []byte { return b[:min(len(b), 120)] }

// publish is post for Centrifugo: the message seq of the sender to
// user's personal channel, through the HTTP API. Centrifugo answers 200
// also when it refuses ({"error": ...}), so the body is read; a refusal
// or an unreadable body counts as an answer-less send (status 0): it
// promises nothing either way.
func (s *sender) publish(ctx context.Context, user int, sentAt int64) (int, string) {
	b := s.body[:0]
	b = append(b, `{"channel":"`...)
	b = append(b, s.r.channels[user]...) // validate keeps uids and the namespace free of JSON escapes
	b = append(b, `","data":"`...)
	b = appendPayload(b, s.id, s.seq, sentAt, s.r.e.Size) // only [a-z0-9:]: a JSON string as it is
	b = append(b, `"}`...)
	s.body = b
	a, errClass := s.exchange(ctx, s.node(0), "application/json", b, postOpts{keep: true})
	if errClass != "" || a.code != http.StatusOK {
		return a.code, errClass
	}
	var v struct {
		Error  *cfError        `json:"error"`
		Result json.RawMessage `json:"result"`
	}
	switch {
	case json.Unmarshal(a.body, &v) != nil:
		return 0, unreadable
	case v.Error != nil:
		return 0, fmt.Sprintf("api error %d %s", v.Error.Code, v.Error.Message)
	}
	return a.code, ""
}
