package main

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// answer runs the handler on the request and appends its response. It
// reports whether the connection closes after it: asked for, a body the
// handler left unread (laneDiscardMax or more, or cut short), or the lane
// closing (a shutdown).
func (f *fastLane) answer(out []byte, head *laneHead, body *io.LimitedReader) ([]byte, bool) {
	h := make(http.Header, 2)
	if head.contentType != "" {
		h["Content-Type"] = []string{head.contentType}
	}
	if head.authorization != "" {
		h["Authorization"] = []string{head.authorization}
	}
	r := &http.Request{Method: http.MethodPost, URL: &url.URL{Path: "/send", RawQuery: head.query},
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h, Body: io.NopCloser(body),
		ContentLength: head.contentLength, Host: head.host, RequestURI: head.target, Close: head.close}
	w := laneWriter{h: make(http.Header, 2)}
	f.s.handleSend(&w, r.WithContext(f.ctx))
	if w.code == 0 {
		w.code = http.StatusOK
	}
	closing := head.close || !discardBody(body, laneDiscardMax) || f.isClosed()
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
