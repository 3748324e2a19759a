package sendreq

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode/utf8"
)

// body is a JSON /send body. Pointers tell a missing field from an empty
// one.
type body struct {
	UID     *string   `json:"uid"`
	UIDs    *[]string `json:"uids"`
	Message *string   `json:"message"`
}

// parseJSON decodes a JSON body with encoding/json, refusing fields it
// does not know (a typo such as "msg" must not push an empty message) and
// anything after the object.
func parseJSON(b []byte) (Request, *Error) {
	var req Request
	// encoding/json would turn invalid UTF-8 into U+FFFD silently.
	if !utf8.Valid(b) {
		return req, badRequest("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var in body
	if err := dec.Decode(&in); err != nil {
		return req, jsonError(err)
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

// jsonError words a decoding error for the client, without Go's type
// names.
func jsonError(err error) *Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		switch {
		case te.Field == "":
			return badRequest("malformed JSON: want an object, not %s", article(te.Value))
		case te.Field == "uids" || strings.HasPrefix(te.Field, "uids."):
			return badRequest("malformed JSON: uids must be an array of strings")
		}
		return badRequest("malformed JSON: %s must be %s, not %s", te.Field, article(te.Type.String()), article(te.Value))
	}
	return badRequest("malformed JSON: %s", trimPrefix(err.Error()))
}

// article names a JSON or Go type for a person: "a string", "an array".
func article(typ string) string {
	switch typ {
	case "string":
		return "a string"
	case "array":
		return "an array"
	case "object":
		return "an object"
	case "number":
		return "a number"
	case "bool":
		return "true or false"
	}
	return typ
}

func trimPrefix(s string) string { return strings.TrimPrefix(s, "json: ") }
