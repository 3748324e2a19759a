package main

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// laneRequest is a connection's request and answer, reused from one
// /send to the next: the lane's requests allocate next to nothing of
// their own.
type laneRequest struct {
	tmpl, r  *http.Request // tmpl carries the lane's context; r is reset from it
	u        url.URL
	h        http.Header
	ct, auth [1]string
	body     io.LimitedReader
	w        laneWriter
}

func (f *fastLane) newLaneRequest(br io.Reader) *laneRequest {
	lr := &laneRequest{tmpl: (&http.Request{}).WithContext(f.ctx), r: new(http.Request), h: make(http.Header, 2)}
	lr.body.R = br
	lr.w.h = make(http.Header, 2)
	return lr
}

// Read and Close make lr.body the request's Body without a wrapper.
func (lr *laneRequest) Read(p []byte) (int, error) { return lr.body.Read(p) }
func (lr *laneRequest) Close() error               { return nil }

// answer runs the handler on the request of head, whose body is next
// in lr's reader, and appends its response to out. It reports whether
// the connection closes after it: asked for, a body the handler left
// unread (laneDiscardMax or more, or cut short), or the lane closing (a
// shutdown).
func (f *fastLane) answer(out []byte, head *laneHead, lr *laneRequest) ([]byte, bool) {
	clear(lr.h)
	if head.contentType != "" {
		lr.ct[0] = head.contentType
		lr.h["Content-Type"] = lr.ct[:]
	}
	if head.authorization != "" {
		lr.auth[0] = head.authorization
		lr.h["Authorization"] = lr.auth[:]
	}
	lr.u = url.URL{Path: "/send", RawQuery: head.query}
	lr.body.N = head.contentLength
	r := lr.r
	*r = *lr.tmpl // every field afresh, the context kept
	r.Method, r.URL, r.Proto, r.ProtoMajor, r.ProtoMinor = http.MethodPost, &lr.u, "HTTP/1.1", 1, 1
	r.Header, r.Body, r.ContentLength = lr.h, lr, head.contentLength
	r.Host, r.RequestURI, r.Close = head.host, head.target, head.close
	w := &lr.w
	clear(w.h)
	w.code, w.body = 0, w.body[:0]
	f.s.handleSend(w, r)
	if w.code == 0 {
		w.code = http.StatusOK
	}
	closing := head.close || !discardBody(&lr.body, laneDiscardMax) || f.isClosed()
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(w.code), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(w.code)...)
	out = append(out, "\r\n"...)
	for k, vs := range w.h {
		for _, v := range vs {
			out = append(append(append(append(out, k...), ": "...), v...), "\r\n"...)
		}
	}
	if closing {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "Date: "...)
	out = append(out, f.date.get()...)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(w.body)), 10)
	out = append(out, "\r\n\r\n"...)
	return append(out, w.body...), closing
}

// laneWriter collects the handler's answer.
type laneWriter struct {
	h    http.Header
	code int
	body []byte
}

func (w *laneWriter) Header() http.Header { return w.h }

func (w *laneWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *laneWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, b...)
	return len(b), nil
}

// laneDate is the Date header's value, formatted once a second.
type laneDate struct {
	mu  sync.Mutex
	sec int64
	s   string
}

func (d *laneDate) get() string {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Unix() != d.sec {
		d.sec, d.s = now.Unix(), now.UTC().Format(http.TimeFormat)
	}
	return d.s
}
