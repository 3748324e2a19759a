package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Every message is "s<sender>:<seq>:<unixnano>:" padded with x up to the
// message size: the receiver learns from it who sent it, its place in that
// sender's order, and when it was sent.

// appendPayload appends the message of (sender, seq) sent at sentAt.
func appendPayload(b []byte, sender, seq int32, sentAt int64, size int) []byte {
	start := len(b)
	b = append(b, 's')
	b = strconv.AppendInt(b, int64(sender), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, sentAt, 10)
	b = append(b, ':')
	for len(b)-start < size {
		b = append(b, 'x')
	}
	return b
}

// maxHeader is the longest header appendPayload writes.
const maxHeader = 1 + 10 + 1 + 10 + 1 + 19 + 1

// parsePayload reads the header at the start of a received message and
// returns its fields and length.
func parsePayload(msg []byte) (sender, seq int32, sentAt int64, hlen int, ok bool) {
	if len(msg) < 2 || msg[0] != 's' {
		return 0, 0, 0, 0, false
	}
	var f [3]int64
	p := msg[1:]
	for i := range f {
		j := bytes.IndexByte(p, ':')
		if j <= 0 || j > 19 {
			return 0, 0, 0, 0, false
		}
		var n int64
		for _, c := range p[:j] {
			d := int64(c - '0')
			if c < '0' || c > '9' || n > (1<<63-1-d)/10 {
				return 0, 0, 0, 0, false
			}
			n = n*10 + d
		}
		if i < 2 && n > 1<<31-1 {
			return 0, 0, 0, 0, false
		}
		f[i], p = n, p[j+1:]
	}
	return int32(f[0]), int32(f[1]), f[2], len(msg) - len(p), true
}

// sender is one /send client. It issues its requests one after the other,
// so its messages to a uid are in /send order; seq counts them from 1.
type sender struct {
	r     *runner
	rep   *reporter
	id    int32
	seq   int32
	body  []byte
	conns []*keepAliveConn // per node; nil for https:// (net/http then)

	// batch, retry
	items   []item       // the messages of the request at hand
	results []itemResult // what its answer said of each, reused
	pending []int        // retry: the items still without a final answer
	kept    []byte       // the answer's body kept by net/http (https://)
	rnd     *rand.Rand   // retry: which tries are abandoned, which acks repeated
	st      postStats    // merged into the runner's when the sender closes
}

// newSender returns sender id, with its own connection to each node.
func (r *runner) newSender(rep *reporter, id int) (*sender, error) {
	s := &sender{r: r, rep: rep, id: int32(id), rnd: rand.New(rand.NewPCG(uint64(id), 0x5e11de))}
	for _, to := range r.sendTo {
		k, err := newKeepAliveConn(to, r.auth, r.e.RequestTimeout)
		if err != nil {
			return nil, err
		}
		s.conns = append(s.conns, k)
	}
	return s, nil
}

// close closes the sender's connections and hands its counts to the
// runner.
func (s *sender) close() {
	for _, k := range s.conns {
		if k != nil {
			k.close()
		}
	}
	s.r.addStats(&s.st)
}

// send pushes message seq+1 to count users from first on (count 1: a
// unicast to users[first]; more: a multicast to users[first..] wrapping
// around). It reports the answer and returns its status, or 0 and the
// class of the error when there was none.
func (s *sender) send(ctx context.Context, first, count int) (int, string) {
	s.seq++
	sentAt := time.Now()
	code, errClass := s.post(ctx, first, count, sentAt.UnixNano())
	if code/100 == 2 {
		s.r.expect.Add(int64(count * s.r.e.ConnsPerUser))
	}
	s.rep.emit(event{
		kind: evSent, sender: s.id, seq: s.seq, first: int32(first), count: int32(count),
		at: sentAt.UnixNano(), t2: time.Now().UnixNano(), code: int32(code), text: errClass,
	})
	return code, errClass
}

// post does one /send and returns its status, or 0 and the class of the
// error when there was no answer.
func (s *sender) post(ctx context.Context, first, count int, sentAt int64) (int, string) {
	e := s.r.e
	if e.centrifugo() {
		return s.publish(ctx, first, sentAt) // validate allows unicasts only
	}
	users := s.r.users
	b := s.body[:0]
	contentType := "application/json"
	switch {
	case count == 1 && e.Form:
		contentType = "application/x-www-form-urlencoded"
		b = append(b, "uid="...)
		b = append(b, url.QueryEscape(users[first])...)
		b = append(b, "&message="...)
		b = appendPayload(b, s.id, s.seq, sentAt, e.Size) // only [a-z0-9:]: nothing to escape
	case count == 1:
		b = s.appendUnicast(b, first, s.seq, sentAt)
	default:
		b = append(b, `{"uids":[`...)
		for i := range count {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = append(b, users[(first+i)%len(users)]...)
			b = append(b, '"')
		}
		b = append(b, `],"message":"`...)
		b = appendPayload(b, s.id, s.seq, sentAt, e.Size)
		b = append(b, `"}`...)
	}
	s.body = b
	a, errClass := s.exchange(ctx, s.node(0), contentType, b, postOpts{})
	return a.code, errClass
}

// appendUnicast appends the JSON body of message seq to user, sent at
// sentAt.
func (s *sender) appendUnicast(b []byte, user int, seq int32, sentAt int64) []byte {
	b = append(b, `{"uid":"`...)
	b = append(b, s.r.users[user]...) // validate keeps uids free of JSON escapes
	b = append(b, `","message":"`...)
	b = appendPayload(b, s.id, seq, sentAt, s.r.e.Size)
	return append(b, `"}`...)
}

// node returns the node of the sender's current request at its try
// (from 0). With several nodes each sender goes round them, so every
// node handles /send for every uid, and a retry goes to the next node:
// a key must hold across the cluster.
func (s *sender) node(try int) int {
	return (int(s.id) + int(s.seq) + try) % len(s.r.sendTo)
}

// exchange posts body to node and returns the answer, or the class of
// the error when there was none.
func (s *sender) exchange(ctx context.Context, node int, contentType string, body []byte, o postOpts) (answer, string) {
	if k := s.conns[node]; k != nil {
		a, err := k.do(ctx, contentType, body, o)
		if err != nil {
			return answer{}, errorClass(err)
		}
		return a, ""
	}
	if o.abandon {
		// Hang up once the request is written, as keepAliveConn does.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { cancel() }})
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.r.sendTo[node], bytes.NewReader(body))
	if err != nil {
		return answer{}, "request: " + err.Error()
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set(s.r.auth.name, s.r.auth.value)
	if o.key != "" {
		req.Header.Set("Idempotency-Key", o.key)
	}
	resp, err := s.r.http.Do(req)
	if o.abandon {
		if err == nil {
			_ = resp.Body.Close() // hanging up: what the body held is not wanted
		}
		return answer{}, errorClass(errAbandoned)
	}
	if err != nil {
		return answer{}, errorClass(err)
	}
	// Read the answer whole so that the keep-alive connection is reused.
	buf := bytes.NewBuffer(s.kept[:0])
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close() // read above: closing has nothing to add to err
	if err != nil {
		return answer{}, errorClass(err)
	}
	s.kept = buf.Bytes()
	a := answer{code: resp.StatusCode, replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
	if o.keep {
		a.body = s.kept
	}
	return a, ""
}

// errorClass names an error briefly, for the report's error counts: the
// full text holds addresses and ports that would make every error unique.
func errorClass(err error) string {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout or cancelled"
	case isTimeout(err):
		return "timeout"
	}
	s := err.Error()
	for _, known := range []string{
		"connection refused", "connection reset", "broken pipe", "EOF", "too many open files",
		"cannot assign requested address", "bad handshake", "no such host",
	} {
		if strings.Contains(s, known) {
			return known
		}
	}
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// pacer spaces the requests of all senders to at most rate per second:
// request n (counted over all senders) may start at start + n/rate.
type pacer struct {
	start time.Time
	rate  float64
}

// wait blocks until request n may start; false when ctx ended first.
func (p pacer) wait(ctx context.Context, n int) bool {
	if p.rate <= 0 {
		return ctx.Err() == nil
	}
	at := p.start.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	return sleep(ctx, time.Until(at))
}
