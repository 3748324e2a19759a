package main

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// deadlineConn is a net.Conn that skips a write deadline equal to the one
// already set. A write deadline is set before every write, and each set
// re-arms a runtime timer under a lock, which showed as a tenth of the
// CPU of a multicast; with Client handing it the same deadline for a
// while, most sets cost a comparison.
//
// The writer and gorilla's control frames (pings, pongs, close) set it
// from different goroutines, hence mu.
type deadlineConn struct {
	net.Conn
	mu        sync.Mutex
	lastWrite time.Time
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Equal(c.lastWrite) {
		return nil
	}
	c.lastWrite = t
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets both deadlines; the cached write deadline follows.
func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastWrite = t
	return c.Conn.SetDeadline(t)
}

// hijackWrapper hands the Upgrader a hijacked connection wrapped in a
// deadlineConn.
type hijackWrapper struct {
	http.ResponseWriter
	hj http.Hijacker
}

func (w hijackWrapper) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := w.hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	return &deadlineConn{Conn: c}, rw, nil
}

// withDeadlineConn wraps w so that Upgrade's connection is a deadlineConn;
// w is returned as is when it cannot hijack (Upgrade then fails as it
// would have).
func withDeadlineConn(w http.ResponseWriter) http.ResponseWriter {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return w
	}
	return hijackWrapper{ResponseWriter: w, hj: hj}
}
