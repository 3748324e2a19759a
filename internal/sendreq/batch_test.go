package sendreq

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

var batchLimits = Limits{MaxMessageSize: 10, MaxMulticast: 2, MaxBatch: 3, MaxBatchBytes: 1 << 10}

func TestParseBatchAccepts(t *testing.T) {
	body := `{"messages":[{"uid":"u1","message":"hi","idempotency_key":"k 1~"},{"uids":["a","b","a"],"message":"x"}]}`
	got, err := ParseBatch("application/json; charset=utf-8", []byte(body), batchLimits)
	want := []Item{
		{Request: Request{UIDs: []string{"u1"}, Message: "hi"}, Key: "k 1~"},
		{Request: Request{UIDs: []string{"a", "b"}, Multicast: true, Message: "x"}},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ParseBatch = %+v, %v; want %+v", got, err, want)
	}
}

func TestParseBatchRefuses(t *testing.T) {
	long := strings.Repeat("k", MaxKeyLen+1)
	tests := []struct {
		name, contentType, body string
		status                  int
		reason                  string
	}{
		{"form", typeForm, `uid=u1&message=hi`, http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
		{"no content type", "", `{}`, http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
		{"too large", typeJSON, `{"messages":[` + strings.Repeat(" ", 1<<10) + `]}`, http.StatusRequestEntityTooLarge, "request body larger than 1024 bytes"},
		{"invalid utf8", typeJSON, "{\"messages\":[\"\xff\"]}", http.StatusBadRequest, "body is not valid UTF-8"},
		{"not an object", typeJSON, `[]`, http.StatusBadRequest, "malformed JSON: want an object, not an array"},
		{"no messages", typeJSON, `{}`, http.StatusBadRequest, "messages is required"},
		{"null messages", typeJSON, `{"messages":null}`, http.StatusBadRequest, "messages is required"},
		{"empty", typeJSON, `{"messages":[]}`, http.StatusBadRequest, "messages is empty"},
		{"messages not an array", typeJSON, `{"messages":{}}`, http.StatusBadRequest, "malformed JSON: messages must be an array, not an object"},
		{"unknown top field", typeJSON, `{"messages":[],"x":1}`, http.StatusBadRequest, `malformed JSON: unknown field "x"`},
		{"too many", typeJSON, `{"messages":[{"uid":"a","message":"m"},{"uid":"a","message":"m"},{"uid":"a","message":"m"},{"uid":"a","message":"m"}]}`, http.StatusRequestEntityTooLarge, "too many messages: 4, at most 3"},
		{"item not an object", typeJSON, `{"messages":[{"uid":"a","message":"m"},3]}`, http.StatusBadRequest, "messages[1]: malformed JSON: want an object, not a number"},
		{"item without uid", typeJSON, `{"messages":[{"uid":"a","message":"m"},{"message":"m"}]}`, http.StatusBadRequest, "messages[1]: uid is required"},
		{"item uid not a string", typeJSON, `{"messages":[{"uid":1,"message":"m"}]}`, http.StatusBadRequest, "messages[0]: malformed JSON: uid must be a string, not a number"},
		{"item uids of numbers", typeJSON, `{"messages":[{"uids":[1],"message":"m"}]}`, http.StatusBadRequest, "messages[0]: malformed JSON: uids must be an array of strings"},
		{"item unknown field", typeJSON, `{"messages":[{"uid":"a","msg":"m"}]}`, http.StatusBadRequest, `messages[0]: malformed JSON: unknown field "msg"`},
		{"item field twice", typeJSON, `{"messages":[{"uid":"a","uid":"b","message":"m"}]}`, http.StatusBadRequest, "messages[0]: malformed JSON: uid given twice"},
		{"item empty message", typeJSON, `{"messages":[{"uid":"a","message":""}]}`, http.StatusBadRequest, "messages[0]: message is required"},
		{"item message too large", typeJSON, `{"messages":[{"uid":"a","message":"m"},{"uid":"a","message":"12345678901"}]}`, http.StatusRequestEntityTooLarge, "messages[1]: message too large: 11 bytes, at most 10"},
		{"item too many uids", typeJSON, `{"messages":[{"uids":["a","b","c"],"message":"m"}]}`, http.StatusRequestEntityTooLarge, "messages[0]: too many uids: 3, at most 2"},
		{"item uid with a control character", typeJSON, `{"messages":[{"uid":"a\u0001","message":"m"}]}`, http.StatusBadRequest, "messages[0]: uid contains a control character"},
		{"item uid and uids", typeJSON, `{"messages":[{"uid":"a","uids":["a"],"message":"m"}]}`, http.StatusBadRequest, "messages[0]: give uid or uids, not both"},
		{"key empty", typeJSON, `{"messages":[{"uid":"a","message":"m","idempotency_key":""}]}`, http.StatusBadRequest, "messages[0]: idempotency key must have 1 to 128 bytes"},
		{"key too long", typeJSON, `{"messages":[{"uid":"a","message":"m","idempotency_key":"` + long + `"}]}`, http.StatusBadRequest, "messages[0]: idempotency key must have 1 to 128 bytes"},
		{"key not ascii", typeJSON, `{"messages":[{"uid":"a","message":"m","idempotency_key":"ké"}]}`, http.StatusBadRequest, "messages[0]: idempotency key must be printable ASCII"},
		{"key with a tab", typeJSON, `{"messages":[{"uid":"a","message":"m","idempotency_key":"k\t"}]}`, http.StatusBadRequest, "messages[0]: idempotency key must be printable ASCII"},
		{"key not a string", typeJSON, `{"messages":[{"uid":"a","message":"m","idempotency_key":5}]}`, http.StatusBadRequest, "messages[0]: malformed JSON: idempotency_key must be a string, not a number"},
		{"key repeated", typeJSON, `{"messages":[{"uid":"a","message":"m","idempotency_key":"k"},{"uid":"b","message":"m","idempotency_key":"k"}]}`, http.StatusBadRequest, "messages[1]: idempotency_key repeats that of messages[0]"},
		{"trailing data", typeJSON, `{"messages":[{"uid":"a","message":"m"}]} x`, http.StatusBadRequest, "malformed JSON at byte 41: invalid character 'x' after top-level value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim := batchLimits
			if tt.name == "too large" {
				lim.MaxBatchBytes = 1 << 10
			} else {
				lim.MaxBatchBytes = 1 << 20
			}
			items, err := ParseBatch(tt.contentType, []byte(tt.body), lim)
			if err == nil || err.Status != tt.status || err.Reason != tt.reason {
				t.Errorf("ParseBatch(%q) = %v, %+v; want %d %q", tt.body, items, err, tt.status, tt.reason)
			}
			if items != nil {
				t.Errorf("a refused batch returned items %v", items)
			}
		})
	}
}

func TestCheckKey(t *testing.T) {
	for _, ok := range []string{"k", " ", "~", strings.Repeat("x", MaxKeyLen), "order-42/retry:1"} {
		if err := CheckKey(ok); err != nil {
			t.Errorf("CheckKey(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", MaxKeyLen+1), "a\x7f", "a\n", "é"} {
		if err := CheckKey(bad); err == nil || err.Status != http.StatusBadRequest {
			t.Errorf("CheckKey(%q) = %v, want a 400", bad, err)
		}
	}
}

// FuzzParseBatch: no body panics the parser; whatever it refuses gets a
// 4xx with a one-line reason; whatever it accepts obeys every limit.
func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(`{"messages":[{"uid":"u1","message":"hi","idempotency_key":"k"}]}`))
	f.Add([]byte(`{"messages":[{"uids":["a","b","a"],"message":"x"},{"uid":"c","message":"y"}]}`))
	f.Add([]byte(`{"messages":[{"uid":"a","message":"m","idempotency_key":"k"},{"uid":"b","message":"m","idempotency_key":"k"}]}`))
	f.Add([]byte(`{"messages":[1,{"msg":2}]}`))
	lim := Limits{MaxMessageSize: 64, MaxMulticast: 4, MaxBatch: 4, MaxBatchBytes: 4 << 10}
	f.Fuzz(func(t *testing.T, body []byte) {
		items, err := ParseBatch(typeJSON, body, lim)
		if err != nil {
			if err.Status < 400 || err.Status > 499 || err.Reason == "" || strings.ContainsAny(err.Reason, "\r\n") {
				t.Fatalf("refusal %d %q: want a 4xx with a one-line reason", err.Status, err.Reason)
			}
			return
		}
		if len(items) == 0 || len(items) > lim.MaxBatch {
			t.Fatalf("accepted %d items", len(items))
		}
		keys := map[string]bool{}
		for _, it := range items {
			checkAccepted(t, it.Request, lim)
			if it.Key != "" {
				if CheckKey(it.Key) != nil || keys[it.Key] {
					t.Fatalf("accepted key %q (bad or repeated)", it.Key)
				}
				keys[it.Key] = true
			}
		}
	})
}

func BenchmarkParseBatch(b *testing.B) {
	var items []string
	for i := range 100 {
		items = append(items, fmt.Sprintf(`{"uid":"user-%d","message":"{\"type\":\"notice\",\"text\":\"a typical payload of about one hundred bytes, give or take a few\"}"}`, i))
	}
	body := []byte(`{"messages":[` + strings.Join(items, ",") + `]}`)
	lim := Limits{MaxMessageSize: 65536, MaxMulticast: 10000, MaxBatch: 1000, MaxBatchBytes: 8 << 20}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseBatch(typeJSON, body, lim); err != nil {
			b.Fatal(err)
		}
	}
}
