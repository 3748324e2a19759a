package sendreq

import (
	"net/http"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
)

// Disconnect is a parsed /disconnect body.
type Disconnect struct {
	UIDs   []string // at least one, no duplicates, in the order given
	Reason string   // the close reason: at most MaxReasonLen bytes
	Revoke bool     // refuse the uids' tokens issued until now
}

// MaxReasonLen bounds a /disconnect reason: a close frame's reason must
// fit in its 125 bytes with the code.
const MaxReasonLen = 100

// DefaultReason is the close reason of a /disconnect that gives none.
const DefaultReason = "disconnected"

type disconnectBody struct {
	UID    *string   `json:"uid"`
	UIDs   *[]string `json:"uids"`
	Reason *string   `json:"reason"`
	Revoke bool      `json:"revoke"`
}

// ParseDisconnect reads a JSON /disconnect body: {"uid": ...} or
// {"uids": [...]}, optional "reason" and "revoke"; the uids follow
// /send's rules and limit (lim.MaxMulticast).
func ParseDisconnect(contentType string, b []byte, lim Limits) (Disconnect, *Error) {
	var d Disconnect
	mt, _, err := mediaType(contentType)
	if err != nil || mt != "application/json" {
		return d, &Error{http.StatusUnsupportedMediaType, "Content-Type must be application/json"}
	}
	if !utf8.Valid(b) {
		return d, badRequest("body is not valid UTF-8")
	}
	var in disconnectBody
	if err := json.Unmarshal(b, &in, json.RejectUnknownMembers(true)); err != nil {
		return d, jsonError(err, "")
	}
	req, e := body{UID: in.UID, UIDs: in.UIDs}.request()
	if e != nil {
		return d, e
	}
	req.Message = "-" // check's message rules do not apply here
	if e := req.check(lim); e != nil {
		return d, e
	}
	d.UIDs, d.Revoke, d.Reason = req.UIDs, in.Revoke, DefaultReason
	if in.Reason != nil {
		switch r := *in.Reason; {
		case r == "":
			return d, badRequest("reason is empty")
		case len(r) > MaxReasonLen:
			return d, badRequest("reason longer than %d bytes", MaxReasonLen)
		case hasControl(r):
			return d, badRequest("reason contains a control character")
		default:
			d.Reason = r
		}
	}
	return d, nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

// ParseOnline reads a JSON /online body: {"uids": [...]}, with /send's
// uid rules and limit (lim.MaxMulticast; more is 413).
func ParseOnline(contentType string, b []byte, lim Limits) ([]string, *Error) {
	mt, _, err := mediaType(contentType)
	if err != nil || mt != "application/json" {
		return nil, &Error{http.StatusUnsupportedMediaType, "Content-Type must be application/json"}
	}
	if !utf8.Valid(b) {
		return nil, badRequest("body is not valid UTF-8")
	}
	var in struct {
		UIDs *[]string `json:"uids"`
	}
	if err := json.Unmarshal(b, &in, json.RejectUnknownMembers(true)); err != nil {
		return nil, jsonError(err, "")
	}
	if in.UIDs == nil {
		return nil, badRequest("uids is required")
	}
	req, e := body{UIDs: in.UIDs}.request()
	if e != nil {
		return nil, e
	}
	req.Message = "-" // check's message rules do not apply here
	if e := req.check(lim); e != nil {
		return nil, e
	}
	return req.UIDs, nil
}
