package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// fakeKey is an idempotency key the fake answered 200: the request it
// came with and the answer.
type fakeKey struct {
	request string
	answer  string
}

// sendKeyed is sendOne with an idempotency key (none: ""): a key seen
// with the same request gets its first answer again, replayed, and
// nothing is sent; with another request, 422. Only 200s are remembered.
// conflictEvery and reuseEvery count the keys not seen before.
// skip remembers the key but sends nothing (hangUpUnsent). Callers hold
// mu.
func (fs *fakeServer) sendKeyed(key, uid string, uids []string, message string, n int64, skip bool) (status int, answer string, replayed bool) {
	if key == "" || fs.f.forgetKeys {
		status, answer = fs.sendOne(uid, uids, message, n, false)
		return status, answer, false
	}
	request := uid + "\x00" + strings.Join(uids, ",") + "\x00" + message
	if seen, ok := fs.keys[key]; ok {
		if seen.request != request {
			return http.StatusUnprocessableEntity, "idempotency key reused with a different request", false
		}
		return http.StatusOK, seen.answer, true
	}
	// Only a key not answered yet can be in flight, or refused.
	k := fs.keyN.Add(1)
	switch {
	case every(fs.f.conflictEvery, k):
		return http.StatusConflict, "request with this idempotency key in progress", false
	case every(fs.f.reuseEvery, k):
		return http.StatusUnprocessableEntity, "idempotency key reused with a different request", false
	}
	status, answer = fs.sendOne(uid, uids, message, n, skip)
	if status == http.StatusOK {
		fs.keys[key] = fakeKey{request: request, answer: answer}
	}
	return status, answer, false
}

// serveBatch is POST /send/batch: JSON {"messages": [...]}, each item a
// /send body plus an optional idempotency_key; refused whole (nothing
// sent) when an item is bad or there are more than maxBatch; else one
// result per item, in order.
func (fs *fakeServer) serveBatch(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+testAPIKey {
		http.Error(w, "bad key", http.StatusUnauthorized)
		return
	}
	var body struct {
		Messages []struct {
			UID     string   `json:"uid"`
			UIDs    []string `json:"uids"`
			Message string   `json:"message"`
			Key     string   `json:"idempotency_key"`
		} `json:"messages"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if len(body.Messages) > fs.f.maxBatch {
		http.Error(w, fmt.Sprintf("at most %d messages", fs.f.maxBatch), http.StatusRequestEntityTooLarge)
		return
	}
	keyed := false
	for i, m := range body.Messages {
		switch {
		case m.UID == "" && m.UIDs == nil:
			http.Error(w, fmt.Sprintf("messages[%d]: uid is required", i), http.StatusBadRequest)
			return
		case m.Message == "":
			http.Error(w, fmt.Sprintf("messages[%d]: message is required", i), http.StatusBadRequest)
			return
		}
		keyed = keyed || m.Key != ""
	}
	hang := keyed && every(fs.f.hangUpKeyedEvery, fs.keyedReq.Add(1))
	results := make([]string, len(body.Messages))
	fs.mu.Lock()
	for i, m := range body.Messages {
		status, answer, replayed := fs.sendKeyed(m.Key, m.UID, m.UIDs, m.Message, fs.requests.Add(1), hang && fs.f.hangUpUnsent)
		switch {
		case status != http.StatusOK:
			reason, _ := json.Marshal(answer) // a string always marshals
			results[i] = fmt.Sprintf(`{"status":%d,"error":%s}`, status, reason)
		case replayed:
			results[i] = strings.TrimSuffix(answer, "}") + `,"replayed":true}`
		default:
			results[i] = answer
		}
	}
	fs.mu.Unlock()
	if hang {
		hangUp(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// A client that hung up is the tool's to count, not the fake's.
	_, _ = fmt.Fprintf(w, `{"results":[%s]}`+"\n", strings.Join(results, ","))
}
