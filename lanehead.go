package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
)

// laneVerdict is what the fast lane does with a connection or a request.
type laneVerdict int

const (
	laneServe    laneVerdict = iota // a plain POST /send: the lane answers
	laneHandOver                    // anything else: net/http answers
	laneDrop                        // nothing to answer (timeout, reset): close
)

// sendPrefix starts every request the lane may answer.
const sendPrefix = "POST /send"

// laneHead is a parsed request head the lane answers.
type laneHead struct {
	size          int    // bytes, up to and including the blank line
	target        string // /send or /send?query
	query         string
	host          string
	contentType   string
	authorization string
	contentLength int64
	close         bool // Connection: close
}

// readHead reads the next request head from br without consuming it:
// only a head the lane understands whole is laneServe; for anything
// else net/http gets every byte, from the first.
func readHead(br *bufio.Reader) (laneHead, laneVerdict) {
	for {
		p, _ := br.Peek(br.Buffered())
		if n := min(len(p), len(sendPrefix)); string(p[:n]) != sendPrefix[:n] {
			return laneHead{}, laneHandOver
		}
		if i := bytes.Index(p, []byte("\r\n\r\n")); i >= 0 {
			return parseHead(p[:i+4])
		}
		if len(p) >= laneHeadMax {
			return laneHead{}, laneHandOver // net/http allows longer heads
		}
		if _, err := br.Peek(len(p) + 1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || len(p) == 0 {
				return laneHead{}, laneDrop
			}
			// A head cut short: net/http answers it as it would.
			return laneHead{}, laneHandOver
		}
	}
}

// parseHead parses a head that ends in its blank line. It hands over
// whatever is not plainly a POST /send over HTTP/1.1 with one Host, one
// Content-Length and no header that changes how the body is read.
func parseHead(b []byte) (laneHead, laneVerdict) {
	h := laneHead{size: len(b), contentLength: -1}
	line, rest, _ := bytes.Cut(b, []byte("\r\n"))
	target, ok := bytes.CutPrefix(line, []byte("POST "))
	if !ok {
		return h, laneHandOver
	}
	target, ok = bytes.CutSuffix(target, []byte(" HTTP/1.1"))
	if !ok || !visibleASCII(target) {
		return h, laneHandOver
	}
	path, query, _ := bytes.Cut(target, []byte("?"))
	if string(path) != "/send" {
		return h, laneHandOver
	}
	h.target, h.query = string(target), string(query)
	var hosts, types, auths int
	for rest = rest[:len(rest)-2]; len(rest) > 0; {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || !isToken(name) {
			return h, laneHandOver // also a folded line, which starts with a space
		}
		value = bytes.Trim(value, " \t")
		if !fieldValue(value) {
			return h, laneHandOver
		}
		switch {
		case asciiEqualFold(name, "host"):
			hosts++
			h.host = string(value)
			if !hostChars(value) {
				return h, laneHandOver
			}
		case asciiEqualFold(name, "content-length"):
			if h.contentLength >= 0 {
				return h, laneHandOver
			}
			if h.contentLength = digits(value); h.contentLength < 0 {
				return h, laneHandOver
			}
		case asciiEqualFold(name, "content-type"):
			types++
			h.contentType = string(value)
		case asciiEqualFold(name, "authorization"):
			auths++
			h.authorization = string(value)
		case asciiEqualFold(name, "connection"):
			switch {
			case asciiEqualFold(value, "close"):
				h.close = true
			case !asciiEqualFold(value, "keep-alive"):
				return h, laneHandOver
			}
		case asciiEqualFold(name, "transfer-encoding"), asciiEqualFold(name, "expect"),
			asciiEqualFold(name, "upgrade"), asciiEqualFold(name, "trailer"):
			return h, laneHandOver
		}
	}
	if hosts != 1 || types > 1 || auths > 1 || h.contentLength < 0 {
		return h, laneHandOver
	}
	return h, laneServe
}

// digits reads a Content-Length: decimal digits only (no sign, no
// space), at most 18 of them; -1 otherwise.
func digits(b []byte) int64 {
	if len(b) == 0 || len(b) > 18 {
		return -1
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// isToken reports whether b is a non-empty header field name (RFC 9110
// token).
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// fieldValue reports whether b holds no control character but tab.
func fieldValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// visibleASCII reports whether b is non-empty printable ASCII without
// spaces, as a request target is.
func visibleASCII(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// hostChars reports whether b is a plain host[:port]: letters, digits,
// and . - : [ ] _ (net/http decides anything else).
func hostChars(b []byte) bool {
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']', c == '_':
		default:
			return false
		}
	}
	return true
}

// asciiEqualFold compares b with the lower-case ASCII s, ignoring case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// discardBody reads what the handler left of a body, if less than max
// bytes; false when max or more is left (net/http's rule), and the
// connection must close.
func discardBody(r *io.LimitedReader, max int64) bool {
	if r.N >= max {
		return false
	}
	_, err := io.Copy(io.Discard, r)
	return err == nil && r.N == 0
}
