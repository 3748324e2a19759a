package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// keepAliveConn is one sender's HTTP/1.1 connection to one node's /send:
// it writes each request itself, in one write, and reads the answer with
// http.ReadResponse on its own buffered reader. net/http's Transport
// hands every request to a writer and a reader goroutine of its
// connection; on a machine whose cores the tool shares with the server,
// those handoffs cost the tool about as much CPU per request as the
// server spends on it, and the waits showed in the tool's latency.
// Used for http:// URLs; https:// goes through net/http.
type keepAliveConn struct {
	addr    string // host:port to dial
	head    []byte // request line, Host, the API key's header and User-Agent
	timeout time.Duration
	conn    net.Conn
	br      *bufio.Reader
	buf     []byte
	answer  []byte    // the last body kept (postOpts.keep), reused
	idle    time.Time // when the last answer was read
}

// maxIdle is how long a connection may rest before a post dials a new
// one: a server closes idle keep-alive connections (go-pusher after 2
// minutes, nginx after 75 s), and a request written into one that is
// closing fails. A sender at a low -rate waits this long between posts.
const maxIdle = 15 * time.Second

// apiAuth is the header that presents the API key: go-pusher's
// Authorization: Bearer, or Centrifugo's X-API-Key.
type apiAuth struct{ name, value string }

// bearer is go-pusher's header for key.
func bearer(key string) apiAuth { return apiAuth{name: "Authorization", value: "Bearer " + key} }

// newKeepAliveConn returns a connection for sendURL, not dialled yet, or
// nil when sendURL is not http://.
func newKeepAliveConn(sendURL string, auth apiAuth, timeout time.Duration) (*keepAliveConn, error) {
	u, err := url.Parse(sendURL)
	if err != nil {
		return nil, fmt.Errorf("send URL: %w", err)
	}
	if u.Scheme != "http" {
		return nil, nil
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	head := "POST " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\n" + auth.name + ": " + auth.value + "\r\nUser-Agent: pusher-bench\r\n"
	return &keepAliveConn{addr: addr, head: []byte(head), timeout: timeout}, nil
}

// postOpts are what the batch and retry scenarios add to a plain post.
type postOpts struct {
	key     string // the Idempotency-Key header; "" none
	abandon bool   // hang up once the request is written (see errAbandoned)
	keep    bool   // keep the answer's body
}

// answer is what a post brought back.
type answer struct {
	code     int
	replayed bool   // header Idempotent-Replayed: true
	body     []byte // with postOpts.keep; valid until the connection's next post
}

// errAbandoned is what a post with postOpts.abandon returns once its
// request is written: the tool hangs up without the answer, as a client
// whose timeout fired would, whatever the server's speed.
var errAbandoned = errors.New("abandoned")

// post sends body and returns the answer's status. Any error closes the
// connection; the next post dials again. A request that failed is not
// retried: the server may have acted on it.
func (k *keepAliveConn) post(ctx context.Context, contentType string, body []byte) (int, error) {
	a, err := k.do(ctx, contentType, body, postOpts{})
	return a.code, err
}

// do is post with options, returning more of the answer.
func (k *keepAliveConn) do(ctx context.Context, contentType string, body []byte, o postOpts) (answer, error) {
	a, err := k.roundTrip(ctx, contentType, body, o)
	if err != nil {
		k.close()
		if ctx.Err() != nil && !errors.Is(err, errAbandoned) {
			return answer{}, ctx.Err()
		}
	}
	return a, err
}

func (k *keepAliveConn) roundTrip(ctx context.Context, contentType string, body []byte, o postOpts) (answer, error) {
	now := time.Now()
	deadline := now.Add(k.timeout) // the whole request, dial included
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if k.conn != nil && now.Sub(k.idle) > maxIdle {
		k.close()
	}
	if k.conn == nil {
		d := net.Dialer{Deadline: deadline}
		c, err := d.DialContext(ctx, "tcp", k.addr)
		if err != nil {
			return answer{}, err
		}
		k.conn, k.br = c, bufio.NewReader(c)
	}
	if err := k.conn.SetDeadline(deadline); err != nil {
		return answer{}, err
	}
	conn := k.conn
	// A deadline in the past ends a blocked read or write; it fails only
	// on a closed connection, whose I/O is over already.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	b := k.buf[:0] // reused from the last request; k.buf keeps what b grows to
	b = append(b, k.head...)
	b = append(b, "Content-Type: "...)
	b = append(b, contentType...)
	if o.key != "" {
		// The tool makes its keys of letters, digits and '-': nothing to
		// escape in a header.
		b = append(b, "\r\nIdempotency-Key: "...)
		b = append(b, o.key...)
	}
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	k.buf = b
	if _, err := k.conn.Write(b); err != nil {
		return answer{}, err
	}
	if o.abandon {
		return answer{}, errAbandoned
	}
	resp, err := http.ReadResponse(k.br, nil)
	for err == nil && resp.StatusCode/100 == 1 { // 100 Continue, 103 Early Hints: the answer follows
		resp, err = http.ReadResponse(k.br, nil)
	}
	if err != nil {
		return answer{}, err
	}
	// Read the answer whole so that the connection can carry the next one.
	const maxAnswer = 1 << 20
	var n int64
	if o.keep {
		buf := bytes.NewBuffer(k.answer[:0])
		n, err = buf.ReadFrom(io.LimitReader(resp.Body, maxAnswer))
		k.answer = buf.Bytes()
	} else {
		n, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	}
	_ = resp.Body.Close() // read above: a broken connection shows in err or the next request
	if err != nil {
		return answer{}, err
	}
	if resp.Close || n == maxAnswer {
		k.close()
	}
	k.idle = time.Now()
	a := answer{code: resp.StatusCode, replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
	if o.keep {
		a.body = k.answer
	}
	return a, nil
}

func (k *keepAliveConn) close() {
	if k.conn != nil {
		_ = k.conn.Close() // dropping it: a failed close leaves nothing to do
		k.conn, k.br = nil, nil
	}
}
