// Package sendreq owns the parsing of /send requests: it turns the plain
// values of a request (content type, raw query, body) into the uids and
// the message to push, or into the 4xx status and one-line reason the
// client gets. It knows nothing of HTTP servers, so that each front (the
// public net/http listener, the internal one) hands it the same values.
// Every byte of untrusted input is read by the standard library:
// mime.ParseMediaType, url.ParseQuery, mime/multipart and encoding/json.
package sendreq

import (
	"bytes"
	"fmt"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"unicode/utf8"

	"go-pusher/internal/stream"
)

// Request is a parsed /send body.
type Request struct {
	UIDs      []string // at least one, no duplicates, in the order given
	Multicast bool     // given as "uids"
	Message   string
}

// Limits bound what Parse accepts.
type Limits struct {
	MaxMessageSize int   // bytes of the message
	MaxMulticast   int   // uids in one request
	MaxBatch       int   // items in one /send/batch
	MaxBatchBytes  int64 // bytes of a /send/batch body
}

// MaxBody is the largest body worth reading: a message of MaxMessageSize
// escaped as \uXXXX throughout, and MaxMulticast uids escaped likewise.
// A front refuses a larger body with TooLarge before reading it whole.
func (l Limits) MaxBody() int64 {
	return int64(l.MaxMessageSize)*6 + int64(l.MaxMulticast)*(stream.MaxUIDLen*6+3) + 4096
}

// Error is a refused request: its HTTP status and one-line reason.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return e.Reason }

func badRequest(format string, a ...any) *Error {
	return &Error{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

// TooLarge is the refusal of a body longer than limit bytes.
func TooLarge(limit int64) *Error {
	return &Error{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit)}
}

// The media types of a /send body.
const (
	typeJSON      = "application/json"
	typeForm      = "application/x-www-form-urlencoded"
	typeMultipart = "multipart/form-data"
)

// Parse reads a /send request: a form (urlencoded or multipart) with uid
// and message, or JSON with uid or uids and message; with no Content-Type
// and no body, uid and message may come in the query (the article's
// clients do that). Fields of a form body and of the query count
// together, as net/http's Request.Form merges them. Every refusal names
// what is wrong.
func Parse(contentType, rawQuery string, body []byte, lim Limits) (Request, *Error) {
	var req Request
	var err *Error
	switch mt, params, perr := mediaType(contentType); {
	case contentType == "":
		if len(body) > 0 {
			return req, &Error{http.StatusUnsupportedMediaType, "Content-Type is required with a body"}
		}
		req, err = parseForm(nil, rawQuery)
	case perr != nil:
		return req, &Error{http.StatusUnsupportedMediaType, "malformed Content-Type"}
	case mt == typeJSON:
		req, err = parseJSON(body)
	case mt == typeForm:
		req, err = parseForm(body, rawQuery)
	case mt == typeMultipart:
		req, err = parseMultipart(body, params["boundary"], rawQuery, lim.MaxBody())
	default:
		return req, &Error{http.StatusUnsupportedMediaType, fmt.Sprintf("unsupported Content-Type %q: use %s, %s or %s", mt, typeJSON, typeForm, typeMultipart)}
	}
	if err != nil {
		return req, err
	}
	// check drops repeated uids from req: it must run before req is
	// read for the result (in `return req, req.check(lim)` the order is
	// the compiler's choice).
	err = req.check(lim)
	return req, err
}

// mediaType parses a Content-Type; the two plain types every backend
// sends skip the parser and its map.
func mediaType(ct string) (string, map[string]string, error) {
	if ct == typeJSON || ct == typeForm {
		return ct, nil, nil
	}
	return mime.ParseMediaType(ct)
}

// parseForm reads uid and message from a urlencoded body and the query.
func parseForm(body []byte, rawQuery string) (Request, *Error) {
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return Request{}, badRequest("malformed form: %v", err)
	}
	if err := addQuery(form, rawQuery); err != nil {
		return Request{}, err
	}
	return fromForm(form)
}

// parseMultipart reads uid and message from a multipart body held in
// memory whole (it is capped at maxMemory already, so no part spills into
// a temporary file) and the query. File parts are not fields.
func parseMultipart(body []byte, boundary, rawQuery string, maxMemory int64) (Request, *Error) {
	if boundary == "" {
		return Request{}, badRequest("malformed form: no multipart boundary")
	}
	mf, err := multipart.NewReader(bytes.NewReader(body), boundary).ReadForm(maxMemory)
	if err != nil {
		return Request{}, badRequest("malformed form: %v", err)
	}
	// Nothing was written to disk (see above); RemoveAll has nothing to do
	// that could fail.
	_ = mf.RemoveAll()
	form := url.Values(mf.Value)
	if err := addQuery(form, rawQuery); err != nil {
		return Request{}, err
	}
	return fromForm(form)
}

// addQuery appends the query's values to form's, after them.
func addQuery(form url.Values, rawQuery string) *Error {
	if rawQuery == "" {
		return nil
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return badRequest("malformed query: %v", err)
	}
	for k, vs := range q {
		form[k] = append(form[k], vs...)
	}
	return nil
}

func fromForm(form url.Values) (Request, *Error) {
	var req Request
	uids, msgs := form["uid"], form["message"]
	if len(uids) > 1 {
		return req, badRequest("uid must be given once")
	}
	if len(msgs) > 1 {
		return req, badRequest("message must be given once")
	}
	if len(uids) == 1 {
		req.UIDs = uids
	}
	if len(msgs) == 1 {
		req.Message = msgs[0]
	}
	return req, nil
}

// check applies the rules common to every body type, and removes
// duplicate uids (they count once).
func (req *Request) check(lim Limits) *Error {
	if len(req.UIDs) == 0 {
		return badRequest("uid is required")
	}
	if !req.Multicast {
		if err := stream.CheckUID(req.UIDs[0]); err != nil {
			return badRequest("uid %v", err)
		}
	} else {
		seen := make(map[string]struct{}, len(req.UIDs))
		uniq := req.UIDs[:0:0]
		for i, uid := range req.UIDs {
			if err := stream.CheckUID(uid); err != nil {
				return badRequest("uids[%d] %v", i, err)
			}
			if _, dup := seen[uid]; !dup {
				seen[uid] = struct{}{}
				uniq = append(uniq, uid)
			}
		}
		req.UIDs = uniq
		if len(uniq) > lim.MaxMulticast {
			return &Error{http.StatusRequestEntityTooLarge, fmt.Sprintf("too many uids: %d, at most %d", len(uniq), lim.MaxMulticast)}
		}
	}
	switch {
	case req.Message == "":
		return badRequest("message is required")
	case len(req.Message) > lim.MaxMessageSize:
		return &Error{http.StatusRequestEntityTooLarge, fmt.Sprintf("message too large: %d bytes, at most %d", len(req.Message), lim.MaxMessageSize)}
	case !utf8.ValidString(req.Message):
		return badRequest("message is not valid UTF-8")
	}
	return nil
}
