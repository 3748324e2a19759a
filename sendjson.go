package main

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
)

// The JSON fast path for /send (see sendparse.go): it returns exactly what
// decodeSendJSON would, or declines and leaves the body to it.

// isJSONSpace reports JSON's insignificant whitespace.
func isJSONSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && isJSONSpace(b[i]) {
		i++
	}
	return i
}

// scanJSONString checks the string starting at b[i] (a quote) and returns
// its raw contents, the length they decode to and the index after its
// closing quote. Every escape shrinks (2 bytes to 1, \uXXXX's 6 to at most
// 3, a pair's 12 to 4), so n < len(raw) exactly when there is one. It
// declines what encoding/json would refuse or rewrite: control characters,
// bad escapes, and lone surrogates (U+FFFD there). The caller has checked
// the body is valid UTF-8.
func scanJSONString(b []byte, i int) (raw []byte, n, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, 0, false
	}
	shrink := 0 // what the escapes so far lose in decoding
	for j := i + 1; j < len(b); {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j - (i + 1) - shrink, j + 1, true
		case c < 0x20:
			return nil, 0, 0, false
		case c != '\\':
			j++
		default:
			r, w := jsonEscape(b, j)
			if w == 0 {
				return nil, 0, 0, false
			}
			shrink, j = shrink+w-utf8.RuneLen(r), j+w
		}
	}
	return nil, 0, 0, false
}

// jsonEscape decodes the escape at b[i] (a backslash) and returns its rune
// and width, or width 0 for one the fast path declines. A surrogate is
// taken only as a valid pair: encoding/json turns any other into U+FFFD.
func jsonEscape(b []byte, i int) (r rune, w int) {
	if i+1 >= len(b) {
		return 0, 0
	}
	switch c := b[i+1]; c {
	case '"', '\\', '/':
		return rune(c), 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r := hex4(b, i+2)
		switch {
		case r < 0:
			return 0, 0 // bad hex
		case !utf16.IsSurrogate(r):
			return r, 6
		case r >= 0xDC00 || i+7 >= len(b) || b[i+6] != '\\' || b[i+7] != 'u':
			return 0, 0 // a low half first, or a high half alone
		}
		if r2 := hex4(b, i+8); 0xDC00 <= r2 && r2 <= 0xDFFF {
			return utf16.DecodeRune(r, r2), 12
		}
	}
	return 0, 0
}

// hex4 decodes the four hex digits at b[i], or returns -1.
func hex4(b []byte, i int) rune {
	if i+4 > len(b) {
		return -1
	}
	var r rune
	for _, c := range b[i : i+4] {
		if !isHex(c) {
			return -1
		}
		r = r<<4 | rune(unhex(c))
	}
	return r
}

// jsonString returns the string whose raw contents scanJSONString checked
// and sized to n bytes, in one allocation.
func jsonString(raw []byte, n int) string {
	if n == len(raw) {
		return string(raw)
	}
	out := make([]byte, 0, n)
	for j := 0; j < len(raw); {
		k := bytes.IndexByte(raw[j:], '\\')
		if k < 0 {
			out = append(out, raw[j:]...)
			break
		}
		out = append(out, raw[j:j+k]...)
		r, w := jsonEscape(raw, j+k)
		out = utf8.AppendRune(out, r)
		j += k + w
	}
	return BytesToString(out) // out is never written again, nor seen elsewhere
}

// scanJSONStrings checks that b[i:] starts with a non-empty array of
// strings, and returns how many and the index after it. An empty array is
// declined: the slow path refuses it.
func scanJSONStrings(b []byte, i int) (n, next int, ok bool) {
	if i >= len(b) || b[i] != '[' {
		return 0, 0, false
	}
	j := skipJSONSpace(b, i+1)
	for {
		_, _, after, ok := scanJSONString(b, j)
		if !ok {
			return 0, 0, false
		}
		n++
		j = skipJSONSpace(b, after)
		if j < len(b) && b[j] == ']' {
			return n, j + 1, true
		}
		if j >= len(b) || b[j] != ',' {
			return 0, 0, false
		}
		j = skipJSONSpace(b, j+1)
	}
}

// jsonStrings returns the n members of the array that scanJSONStrings
// checked at b[i]. Each gets its own allocation, as with encoding/json:
// uids outlive the request (history keeps them as map keys), and one kept
// uid must not keep all the others alive.
func jsonStrings(b []byte, i, n int) []string {
	out := make([]string, n)
	j := skipJSONSpace(b, i+1)
	for k := range out {
		raw, size, after, _ := scanJSONString(b, j)
		out[k] = jsonString(raw, size)
		j = skipJSONSpace(b, after)
		j = skipJSONSpace(b, j+1) // past ',' or ']'
	}
	return out
}

// parseSendJSONFast parses one object with keys among uid, uids and message,
// each at most once, with string values, and returns what decodeSendJSON
// would. Anything else is declined. Nothing is allocated until the whole
// body is known good: a decline costs no garbage.
func parseSendJSONFast(body []byte) (req sendRequest, ok bool) {
	if !utf8.Valid(body) {
		return sendRequest{}, false
	}
	var uid, msg []byte
	var uidSize, msgSize int
	haveUID, haveMsg := false, false
	uidsAt, nUIDs := -1, 0 // the uids array, once seen
	i := skipJSONSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return sendRequest{}, false
	}
	i = skipJSONSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		i++
	} else {
		for {
			// Keys are compared raw: one with an escape, which encoding/json
			// would decode and match case-insensitively, is declined below.
			key, _, after, ok := scanJSONString(body, i)
			if !ok {
				return sendRequest{}, false
			}
			i = skipJSONSpace(body, after)
			if i >= len(body) || body[i] != ':' {
				return sendRequest{}, false
			}
			i = skipJSONSpace(body, i+1)
			switch string(key) { // no allocation: compared in place
			case "uid":
				if haveUID || uidsAt >= 0 {
					return sendRequest{}, false // twice, or with uids
				}
				if uid, uidSize, i, ok = scanJSONString(body, i); !ok {
					return sendRequest{}, false
				}
				haveUID = true
			case "uids":
				if haveUID || uidsAt >= 0 {
					return sendRequest{}, false
				}
				uidsAt = i
				if nUIDs, i, ok = scanJSONStrings(body, i); !ok {
					return sendRequest{}, false
				}
			case "message":
				if haveMsg {
					return sendRequest{}, false
				}
				if msg, msgSize, i, ok = scanJSONString(body, i); !ok {
					return sendRequest{}, false
				}
				haveMsg = true
			default:
				return sendRequest{}, false // unknown, or another case of a known key
			}
			i = skipJSONSpace(body, i)
			if i < len(body) && body[i] == '}' {
				i++
				break
			}
			if i >= len(body) || body[i] != ',' {
				return sendRequest{}, false
			}
			i = skipJSONSpace(body, i+1)
		}
	}
	if skipJSONSpace(body, i) != len(body) {
		return sendRequest{}, false
	}
	switch {
	case haveUID:
		req.UIDs = []string{jsonString(uid, uidSize)}
	case uidsAt >= 0:
		req.UIDs, req.Multicast = jsonStrings(body, uidsAt, nUIDs), true
	}
	if haveMsg {
		req.Message = jsonString(msg, msgSize)
	}
	return req, true
}
