package sendreq

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Item is one message of a /send/batch body.
type Item struct {
	Request
	Key string // idempotency_key; empty when none was given
}

// batchBody is a /send/batch body.
type batchBody struct {
	Messages *[]batchItem `json:"messages"`
}

type batchItem struct {
	body
	Key *string `json:"idempotency_key"`
}

// ParseBatch reads a /send/batch body: JSON {"messages": [item, ...]},
// each item a JSON /send body with an optional idempotency_key. It is all
// or nothing: the first bad item refuses the batch, its reason prefixed
// with the item's index (messages[3]: uid is required).
func ParseBatch(contentType string, b []byte, lim Limits) ([]Item, *Error) {
	if mt, _, err := mediaType(contentType); err != nil || mt != typeJSON {
		return nil, &Error{http.StatusUnsupportedMediaType, "Content-Type must be " + typeJSON}
	}
	if int64(len(b)) > lim.MaxBatchBytes {
		return nil, TooLarge(lim.MaxBatchBytes)
	}
	if !utf8.Valid(b) {
		return nil, badRequest("body is not valid UTF-8")
	}
	var in batchBody
	if err := json.Unmarshal(b, &in, json.RejectUnknownMembers(true)); err != nil {
		return nil, batchJSONError(err)
	}
	switch {
	case in.Messages == nil:
		return nil, badRequest("messages is required")
	case len(*in.Messages) == 0:
		return nil, badRequest("messages is empty")
	case len(*in.Messages) > lim.MaxBatch:
		return nil, &Error{http.StatusRequestEntityTooLarge, fmt.Sprintf("too many messages: %d, at most %d", len(*in.Messages), lim.MaxBatch)}
	}
	items := make([]Item, len(*in.Messages))
	keys := make(map[string]int)
	for i, it := range *in.Messages {
		req, err := it.request()
		if err == nil {
			err = req.check(lim)
		}
		if err == nil && it.Key != nil {
			if err = CheckKey(*it.Key); err == nil {
				if j, dup := keys[*it.Key]; dup {
					err = badRequest("idempotency_key repeats that of messages[%d]", j)
				}
				keys[*it.Key] = i
			}
		}
		if err != nil {
			return nil, &Error{err.Status, fmt.Sprintf("messages[%d]: %s", i, err.Reason)}
		}
		items[i].Request = req
		if it.Key != nil {
			items[i].Key = *it.Key
		}
	}
	return items, nil
}

// MaxKeyLen is the longest idempotency key.
const MaxKeyLen = 128

// CheckKey reports why key is not an idempotency key: 1 to MaxKeyLen
// printable ASCII bytes (space to ~).
func CheckKey(key string) *Error {
	if key == "" || len(key) > MaxKeyLen {
		return badRequest("idempotency key must have 1 to %d bytes", MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < ' ' || key[i] > '~' {
			return badRequest("idempotency key must be printable ASCII")
		}
	}
	return nil
}

// batchJSONError words a decoding error of a batch like jsonError words
// one of a /send body, naming the item: messages[3]: uid must be a string.
func batchJSONError(err error) *Error {
	var ptr jsontext.Pointer
	var se *json.SemanticError
	var sy *jsontext.SyntacticError
	switch {
	case errors.As(err, &se):
		ptr = se.JSONPointer
	case errors.As(err, &sy):
		ptr = sy.JSONPointer
	}
	rest, ok := strings.CutPrefix(string(ptr), "/messages/")
	if !ok {
		if string(ptr) == "/messages" && se != nil {
			return badRequest("malformed JSON: messages must be an array, not %s", kindName(se.JSONKind))
		}
		return jsonError(err, "")
	}
	index, _, _ := strings.Cut(rest, "/")
	if _, nerr := strconv.Atoi(index); nerr != nil {
		return jsonError(err, "")
	}
	e := jsonError(err, "/messages/"+index)
	e.Reason = "messages[" + index + "]: " + e.Reason
	return e
}
