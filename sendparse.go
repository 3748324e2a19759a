package main

import (
	"bytes"
	"io"
)

// The fast paths here (form) and in sendjson.go (JSON) parse the common,
// simple /send bodies without encoding/json or url.ParseQuery. Each either
// returns exactly what the slow path would have returned, or declines (ok
// false) and the slow path runs on the same bytes; so every refusal, and
// its wording, still comes from the slow path.

// maxBodyPrealloc caps the buffer sized from Content-Length: a client may
// announce a large body and send nothing, and must not make us allocate it.
const maxBodyPrealloc = 64 << 10

// readBody reads r to EOF, like io.ReadAll, into a buffer sized from the
// announced length (-1 when unknown), so that a typical body takes one
// allocation.
func readBody(r io.Reader, announced int64) ([]byte, error) {
	n := 512
	if announced >= 0 && announced < maxBodyPrealloc {
		n = int(announced) + 1 // +1: room to read the EOF without growing
	}
	b := make([]byte, 0, n)
	for {
		m, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// maxFastFormPairs bounds the &-separated pairs the form fast path takes in
// the body or in the query: plain sends have two or three. url.ParseQuery
// refuses more than 10000, or more than GODEBUG urlmaxqueryparams allows;
// setting that between 1 and maxFastFormPairs would break the equivalence.
const maxFastFormPairs = 16

// formScan collects the raw (still escaped) uid and message values of
// urlencoded pairs, in the order r.Form would list them.
type formScan struct {
	uid, msg   []byte
	nUID, nMsg int
}

// scan adds the pairs of one urlencoded string. It declines whatever
// url.ParseQuery would refuse (a ';' anywhere in a pair, a bad %-escape in
// any key or value, too many pairs) and a second uid or message.
func (f *formScan) scan(s []byte) bool {
	if bytes.Count(s, []byte("&"))+1 > maxFastFormPairs {
		return false
	}
	for len(s) > 0 {
		pair, rest, _ := bytes.Cut(s, []byte("&"))
		s = rest
		if bytes.IndexByte(pair, ';') >= 0 {
			return false
		}
		if len(pair) == 0 {
			continue
		}
		key, value, _ := bytes.Cut(pair, []byte("="))
		if !validQueryEscapes(key) || !validQueryEscapes(value) {
			return false
		}
		switch {
		case queryKeyIs(key, "uid"):
			f.uid, f.nUID = value, f.nUID+1
		case queryKeyIs(key, "message"):
			f.msg, f.nMsg = value, f.nMsg+1
		}
		if f.nUID > 1 || f.nMsg > 1 {
			return false
		}
	}
	return true
}

// parseSendFormFast parses a urlencoded body and the raw URL query, which
// r.Form merges, and returns what parseSendForm would.
func parseSendFormFast(body, query []byte) (req sendRequest, ok bool) {
	var f formScan
	if !f.scan(body) || !f.scan(query) {
		return sendRequest{}, false
	}
	if f.nUID == 1 {
		req.UIDs = []string{queryUnescape(f.uid)}
	}
	if f.nMsg == 1 {
		req.Message = queryUnescape(f.msg)
	}
	return req, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// validQueryEscapes reports whether url.QueryUnescape accepts s: every '%'
// followed by two hex digits.
func validQueryEscapes(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

// unescapedAt decodes the byte of s at i ('+' or %XX included) and returns
// it with the index of the next one. s has valid escapes.
func unescapedAt(s []byte, i int) (byte, int) {
	switch s[i] {
	case '+':
		return ' ', i + 1
	case '%':
		return unhex(s[i+1])<<4 | unhex(s[i+2]), i + 3
	}
	return s[i], i + 1
}

// queryKeyIs reports whether the escaped key decodes to want, without
// decoding it into memory ("ui%64" is "uid" to url.ParseQuery).
func queryKeyIs(key []byte, want string) bool {
	i := 0
	for k := 0; k < len(want); k++ {
		if i >= len(key) {
			return false
		}
		var c byte
		c, i = unescapedAt(key, i)
		if c != want[k] {
			return false
		}
	}
	return i == len(key)
}

// queryUnescape decodes s as url.QueryUnescape does, into one allocation.
// s has valid escapes.
func queryUnescape(s []byte) string {
	n := len(s) - 2*bytes.Count(s, []byte("%"))
	if n == len(s) && bytes.IndexByte(s, '+') < 0 {
		return string(s)
	}
	b := make([]byte, n)
	for i, j := 0, 0; i < len(s); j++ {
		switch c := s[i]; c {
		case '%':
			b[j] = unhex(s[i+1])<<4 | unhex(s[i+2])
			i += 3
		case '+':
			b[j] = ' '
			i++
		default:
			b[j] = c
			i++
		}
	}
	return BytesToString(b) // b is never written again, nor seen elsewhere
}
