package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"
	"unicode/utf8"

	"go-pusher/message"
)

// sendRequest is a parsed /send body.
type sendRequest struct {
	UIDs      []string // at least one, no duplicates, in the order given
	Multicast bool     // given as "uids"
	Message   string
}

// sendLimits bound what parseSendRequest accepts.
type sendLimits struct {
	MaxMessageSize int
	MaxMulticast   int
}

// maxBody is the largest body worth reading: a message of MaxMessageSize
// escaped as \uXXXX throughout, and MaxMulticast uids escaped likewise.
func (l sendLimits) maxBody() int64 {
	return int64(l.MaxMessageSize)*6 + int64(l.MaxMulticast)*(maxUIDLen*6+3) + 4096
}

// httpError is a refused request: its status and one-line reason.
type httpError struct {
	code   int
	reason string
}

func (e *httpError) Error() string { return e.reason }

func badRequest(format string, a ...any) *httpError {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

// parseSendRequest reads a /send body: a form (urlencoded or multipart)
// with uid and message, or JSON with uid or uids and message. Every refusal
// names what is wrong.
func parseSendRequest(r *http.Request, lim sendLimits) (sendRequest, *httpError) {
	r.Body = http.MaxBytesReader(nil, r.Body, lim.maxBody())
	var req sendRequest
	var herr *httpError
	ct := r.Header.Get("Content-Type")
	mt, err := ct, error(nil)
	if ct != "application/json" && ct != "application/x-www-form-urlencoded" {
		// Those two parse to themselves: skip the parser and its map.
		mt, _, err = mime.ParseMediaType(ct)
	}
	switch {
	case ct == "":
		// No body type: the article's clients may put uid and message in
		// the query string. A body nobody can interpret is refused.
		if n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 1)); n > 0 {
			return req, &httpError{http.StatusUnsupportedMediaType, "Content-Type is required with a body"}
		}
		req, herr = parseSendForm(r, false, 0)
	case err != nil:
		return req, &httpError{http.StatusUnsupportedMediaType, "malformed Content-Type"}
	case mt == "application/json":
		req, herr = parseSendJSON(r)
	case mt == "application/x-www-form-urlencoded":
		req, herr = parseSendURLEncoded(r, lim.maxBody())
	case mt == "multipart/form-data":
		req, herr = parseSendForm(r, true, lim.maxBody())
	default:
		return req, &httpError{http.StatusUnsupportedMediaType, fmt.Sprintf("unsupported Content-Type %q: use application/json, application/x-www-form-urlencoded or multipart/form-data", mt)}
	}
	if herr != nil {
		return req, herr
	}
	return req, req.check(lim)
}

// parseSendForm reads uid and message from a form body or the query. A
// multipart body is read into memory whole: the body is capped at maxMemory
// already, so no part spills into a temporary file.
func parseSendForm(r *http.Request, multipart bool, maxMemory int64) (sendRequest, *httpError) {
	var err error
	if multipart {
		err = r.ParseMultipartForm(maxMemory)
		if r.MultipartForm != nil {
			defer r.MultipartForm.RemoveAll() // files, if any, are not wanted
		}
	} else {
		err = r.ParseForm()
	}
	if err != nil {
		return sendRequest{}, bodyError(err, "malformed form")
	}
	var req sendRequest
	uids, msgs := r.Form["uid"], r.Form["message"]
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

// parseSendURLEncoded reads a urlencoded body with parseSendFormFast, or
// else with parseSendForm (r.ParseForm) over the same bytes.
func parseSendURLEncoded(r *http.Request, maxBody int64) (sendRequest, *httpError) {
	// ParseForm reads the body only for these methods, and not at all once
	// the form is parsed; and it needs a URL for the query.
	switch {
	case r.Method != http.MethodPost && r.Method != http.MethodPut && r.Method != http.MethodPatch,
		r.Form != nil, r.PostForm != nil, r.URL == nil:
		return parseSendForm(r, false, 0)
	}
	body, err := readBody(r.Body, r.ContentLength)
	if err != nil {
		return sendRequest{}, bodyError(err, "malformed form") // as ParseForm reports it
	}
	if req, ok := parseSendFormFast(body, StringToBytes(r.URL.RawQuery)); ok {
		return req, nil
	}
	// ParseForm applies its own 10 MB cap unless the body is a
	// MaxBytesReader; this one is, as before, and the body fits it.
	r.Body = http.MaxBytesReader(nil, io.NopCloser(bytes.NewReader(body)), maxBody)
	return parseSendForm(r, false, 0)
}

// bodyError turns a body read error into 413 when the body was too large.
func bodyError(err error, what string) *httpError {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", tooBig.Limit)}
	}
	return badRequest("%s: %v", what, err)
}

// sendJSON is the JSON body. Pointers tell a missing field from an empty one.
type sendJSON struct {
	UID     *string   `json:"uid"`
	UIDs    *[]string `json:"uids"`
	Message *string   `json:"message"`
}

// parseSendJSON reads a JSON body with parseSendJSONFast, or else with
// decodeSendJSON over the same bytes.
func parseSendJSON(r *http.Request) (sendRequest, *httpError) {
	body, err := readBody(r.Body, r.ContentLength)
	if err != nil {
		return sendRequest{}, bodyError(err, "read body")
	}
	if req, ok := parseSendJSONFast(body); ok {
		return req, nil
	}
	return decodeSendJSON(body)
}

// decodeSendJSON decodes body with encoding/json, which names whatever is
// wrong with it.
func decodeSendJSON(body []byte) (sendRequest, *httpError) {
	var req sendRequest
	// encoding/json would turn invalid UTF-8 into U+FFFD silently.
	if !utf8.Valid(body) {
		return req, badRequest("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var in sendJSON
	if err := dec.Decode(&in); err != nil {
		return req, badRequest("malformed JSON: %v", err)
	}
	if dec.More() {
		return req, badRequest("malformed JSON: data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, badRequest("malformed JSON: data after the object")
	}
	switch {
	case in.UID != nil && in.UIDs != nil:
		return req, badRequest("give uid or uids, not both")
	case in.UID != nil:
		req.UIDs = []string{*in.UID}
	case in.UIDs != nil:
		if len(*in.UIDs) == 0 {
			return req, badRequest("uids is empty")
		}
		req.UIDs, req.Multicast = *in.UIDs, true
	}
	if in.Message != nil {
		req.Message = *in.Message
	}
	return req, nil
}

// check applies the rules common to every body type, and removes
// duplicate uids (they count once).
func (req *sendRequest) check(lim sendLimits) *httpError {
	if len(req.UIDs) == 0 {
		return badRequest("uid is required")
	}
	if !req.Multicast {
		if err := checkUID(req.UIDs[0]); err != nil {
			return badRequest("uid %v", err)
		}
	} else {
		seen := make(map[string]struct{}, len(req.UIDs))
		uniq := req.UIDs[:0:0]
		for i, uid := range req.UIDs {
			if err := checkUID(uid); err != nil {
				return badRequest("uids[%d] %v", i, err)
			}
			if _, dup := seen[uid]; !dup {
				seen[uid] = struct{}{}
				uniq = append(uniq, uid)
			}
		}
		req.UIDs = uniq
		if len(uniq) > lim.MaxMulticast {
			return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("too many uids: %d, at most %d", len(uniq), lim.MaxMulticast)}
		}
	}
	switch {
	case req.Message == "":
		return badRequest("message is required")
	case len(req.Message) > lim.MaxMessageSize:
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("message too large: %d bytes, at most %d", len(req.Message), lim.MaxMessageSize)}
	case !utf8.ValidString(req.Message):
		return badRequest("message is not valid UTF-8")
	}
	return nil
}

// handleSend is POST /send.
func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	code := s.send(w, r, start)
	s.metrics.sendCounter(code).Inc()
	s.metrics.sendDuration.Observe(time.Since(start).Seconds())
}

// send handles one /send and returns the status it answered.
func (s *Server) send(w http.ResponseWriter, r *http.Request, now time.Time) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return replyText(w, http.StatusMethodNotAllowed, "method not allowed: use POST")
	}
	if !s.checkAPIKey(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="go-pusher"`)
		return replyText(w, http.StatusUnauthorized, "missing or wrong API key: send Authorization: Bearer <PUSHER_API_KEY>")
	}
	req, herr := parseSendRequest(r, s.limits)
	if herr != nil {
		return replyText(w, herr.code, herr.reason)
	}

	if !s.enter() {
		return replyText(w, http.StatusServiceUnavailable, "server shutting down")
	}
	defer s.leave()

	online, notFound, err := s.broker.Online(r.Context(), req.UIDs)
	if err != nil {
		s.log.Warn("cluster lookup failed", "err", err)
		return replyText(w, http.StatusServiceUnavailable, "cluster unavailable: the message was not sent")
	}
	if !req.Multicast && len(online) == 0 {
		return replyText(w, http.StatusNotFound, "client not found: "+req.UIDs[0])
	}

	m := newMessage(s.ids.next(now), StringToBytes(req.Message), now)
	if len(online) > 0 {
		// The log bounds the wait itself (-message-log-timeout).
		if err := s.msgLog.Log(r.Context(), message.Log{ID: m.ID, UIDs: online, Message: req.Message, Time: now}); err != nil {
			s.log.Warn("message log failed", "id", m.ID, "err", err)
			return replyText(w, http.StatusServiceUnavailable, "message log unavailable: the message was not sent")
		}
		// The broker bounds the publish itself; a client that hangs up
		// must not cut it in half.
		gone, err := s.broker.Publish(context.WithoutCancel(r.Context()), m, online)
		if err != nil {
			// Redis may have run some publishes before it failed to answer:
			// the outcome is unknown, so the log rows stay queued.
			s.log.Warn("publish failed", "id", m.ID, "err", err)
			return replyText(w, http.StatusServiceUnavailable, "cluster unavailable: the message may not have been delivered")
		}
		if len(gone) > 0 {
			// Went away between the lookup and the publish: nobody will
			// get it, and nothing was stored for them.
			for _, uid := range gone {
				s.msgLog.Update(m.ID, uid, message.StatusFailed)
			}
			if !req.Multicast {
				return replyText(w, http.StatusNotFound, "client not found: "+req.UIDs[0])
			}
			online, notFound = moveGone(online, notFound, gone)
		}
	}

	if !req.Multicast {
		return replyJSON(w, http.StatusOK, `{"id":"`+m.ID+"\"}\n")
	}
	if online == nil {
		online = []string{}
	}
	if notFound == nil {
		notFound = []string{}
	}
	body, err := json.Marshal(struct {
		ID       string   `json:"id"`
		Sent     []string `json:"sent"`
		NotFound []string `json:"not_found"`
	}{m.ID, online, notFound})
	if err != nil {
		// Strings always marshal; this is unreachable.
		return replyText(w, http.StatusInternalServerError, "encode reply: "+err.Error())
	}
	return replyJSON(w, http.StatusOK, string(append(body, '\n')))
}

// replyJSON answers with body, a JSON value ending in a newline.
func replyJSON(w http.ResponseWriter, code int, body string) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// A write error means the client left; the message is sent regardless.
	_, _ = io.WriteString(w, body)
	return code
}

// moveGone moves the uids of gone from online to offline, keeping order.
func moveGone(online, offline, gone []string) ([]string, []string) {
	g := make(map[string]bool, len(gone))
	for _, uid := range gone {
		g[uid] = true
	}
	kept := online[:0]
	for _, uid := range online {
		if g[uid] {
			offline = append(offline, uid)
		} else {
			kept = append(kept, uid)
		}
	}
	return kept, offline
}
