package sendreq

import (
	"bytes"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"go-pusher/internal/stream"
)

var testLimits = Limits{MaxMessageSize: 10, MaxMulticast: 2}

func TestParseAccepts(t *testing.T) {
	form, js := typeForm, typeJSON
	tests := []struct {
		name, contentType, query, body string
		want                           Request
	}{
		{"form", form, "", "uid=u1&message=hi", Request{UIDs: []string{"u1"}, Message: "hi"}},
		{"form escapes", form, "", "uid=u%201&message=a+b%21", Request{UIDs: []string{"u 1"}, Message: "a b!"}},
		{"form charset", form + "; charset=utf-8", "", "uid=u1&message=hi", Request{UIDs: []string{"u1"}, Message: "hi"}},
		{"query without a body", "", "uid=u1&message=hi", "", Request{UIDs: []string{"u1"}, Message: "hi"}},
		{"form and query", form, "message=hi", "uid=u1", Request{UIDs: []string{"u1"}, Message: "hi"}},
		{"json", js, "", `{"uid":"u1","message":"hi"}`, Request{UIDs: []string{"u1"}, Message: "hi"}},
		{"json escapes", js, "", `{"uid":"u\u00e9","message":"\ud83d\ude00\n"}`, Request{UIDs: []string{"ué"}, Message: "😀\n"}},
		{"json multicast dedup", js, "", `{"uids":["a","b","a"],"message":"x"}`, Request{UIDs: []string{"a", "b"}, Multicast: true, Message: "x"}},
		{"json trailing space", js, "", "{\"uid\":\"u1\",\"message\":\"hi\"}\n ", Request{UIDs: []string{"u1"}, Message: "hi"}},
		{"json ignores the query", js, "uid=other", `{"uid":"u1","message":"hi"}`, Request{UIDs: []string{"u1"}, Message: "hi"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.contentType, tt.query, []byte(tt.body), testLimits)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q, %q, %q) = %+v, %v; want %+v", tt.contentType, tt.query, tt.body, got, err, tt.want)
			}
		})
	}
}

func TestParseMultipart(t *testing.T) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	if err := errors.Join(mw.WriteField("uid", "u1"), mw.WriteField("message", "hi"), mw.Close()); err != nil {
		t.Fatal(err)
	}
	got, err := Parse(mw.FormDataContentType(), "", b.Bytes(), testLimits)
	if err != nil || got.UIDs[0] != "u1" || got.Message != "hi" {
		t.Errorf("Parse(multipart) = %+v, %v", got, err)
	}

	b.Reset()
	mw = multipart.NewWriter(&b)
	if err := mw.WriteField("uid", "u1"); err != nil {
		t.Fatal(err)
	}
	fw, ferr := mw.CreateFormFile("message", "m.txt")
	if ferr != nil {
		t.Fatal(ferr)
	}
	if _, err := fw.Write([]byte("a file is not the message")); err != nil {
		t.Fatal(err)
	}
	mw.Close()
	if _, err := Parse(mw.FormDataContentType(), "", b.Bytes(), testLimits); err == nil || err.Reason != "message is required" {
		t.Errorf("Parse(multipart with message as a file) = %v, want message is required", err)
	}
	if _, err := Parse("multipart/form-data", "", b.Bytes(), testLimits); err == nil || err.Status != http.StatusBadRequest {
		t.Errorf("Parse(multipart without a boundary) = %v, want 400", err)
	}
}

func TestParseRefuses(t *testing.T) {
	form, js := typeForm, typeJSON
	tests := []struct {
		name, contentType, query, body string
		status                         int
		reason                         string
	}{
		{"no uid form", form, "", "message=hi", 400, "uid is required"},
		{"empty uid", form, "", "uid=&message=hi", 400, "uid is empty"},
		{"uid too long", form, "", "uid=" + strings.Repeat("u", stream.MaxUIDLen+1) + "&message=hi", 400, "uid is longer than 128 bytes"},
		{"uid with a newline", form, "", "uid=a%0Ab&message=hi", 400, "uid contains a control character"},
		{"uid not utf8", form, "", "uid=%FF&message=hi", 400, "uid is not valid UTF-8"},
		{"uid twice", form, "", "uid=u1&uid=u2&message=hi", 400, "uid must be given once"},
		{"uid in body and query", form, "uid=u2", "uid=u1&message=hi", 400, "uid must be given once"},
		{"message twice", form, "", "uid=u1&message=a&message=b", 400, "message must be given once"},
		{"no message", form, "", "uid=u1", 400, "message is required"},
		{"message not utf8", form, "", "uid=u1&message=%FF%FE", 400, "message is not valid UTF-8"},
		{"message too large", form, "", "uid=u1&message=" + strings.Repeat("a", 11), 413, "message too large: 11 bytes, at most 10"},
		{"malformed form", form, "", "uid=u1&message=%zz", 400, `malformed form: invalid URL escape "%zz"`},
		{"semicolon", form, "", "uid=u1;message=hi", 400, "malformed form: invalid semicolon separator in query"},
		{"malformed query", form, "a=%zz", "uid=u1&message=hi", 400, `malformed query: invalid URL escape "%zz"`},
		{"json not utf8", js, "", "{\"uid\":\"u1\",\"message\":\"\xff\"}", 400, "body is not valid UTF-8"},
		{"json cut", js, "", `{"uid":"u1",`, 400, "malformed JSON at byte 12: unexpected EOF"},
		{"json not object", js, "", `["u1"]`, 400, "malformed JSON: want an object, not an array"},
		{"json wrong type", js, "", `{"uid":1,"message":"hi"}`, 400, "malformed JSON: uid must be a string, not a number"},
		{"json message not a string", js, "", `{"uid":"u1","message":{}}`, 400, "malformed JSON: message must be a string, not an object"},
		{"json uids not strings", js, "", `{"uids":["a",2],"message":"hi"}`, 400, "malformed JSON: uids must be an array of strings"},
		{"json unknown field", js, "", `{"uid":"u1","msg":"hi"}`, 400, `malformed JSON: unknown field "msg"`},
		{"json field in capitals", js, "", `{"UID":"u1","message":"hi"}`, 400, `malformed JSON: unknown field "UID"`},
		{"json field twice", js, "", `{"uid":"a","uid":"b","message":"hi"}`, 400, "malformed JSON: uid given twice"},
		{"json empty", js, "", ``, 400, "malformed JSON at byte 0: unexpected EOF"},
		{"json trailing", js, "", `{"uid":"u1","message":"hi"} {}`, 400, "malformed JSON at byte 28: invalid character '{' after top-level value"},
		{"uid and uids", js, "", `{"uid":"u1","uids":["u1"],"message":"hi"}`, 400, "give uid or uids, not both"},
		{"uids empty", js, "", `{"uids":[],"message":"hi"}`, 400, "uids is empty"},
		{"uids bad member", js, "", `{"uids":["u1",""],"message":"hi"}`, 400, "uids[1] is empty"},
		{"uids control character", js, "", `{"uids":["u1","\u001b"],"message":"hi"}`, 400, "uids[1] contains a control character"},
		{"too many uids", js, "", `{"uids":["a","b","c"],"message":"hi"}`, 413, "too many uids: 3, at most 2"},
		{"unknown content type", "text/plain", "", "uid=u1&message=hi", 415, `unsupported Content-Type "text/plain": use application/json, application/x-www-form-urlencoded or multipart/form-data`},
		{"body without content type", "", "", "uid=u1&message=hi", 415, "Content-Type is required with a body"},
		{"malformed content type", "application/json; ===", "", `{}`, 415, "malformed Content-Type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.contentType, tt.query, []byte(tt.body), testLimits)
			if err == nil || err.Status != tt.status || err.Reason != tt.reason {
				t.Errorf("Parse(%q, %q, %q) = %+v, %v; want %d %q", tt.contentType, tt.query, tt.body, got, err, tt.status, tt.reason)
			}
		})
	}
}

// TestFormAsNetHTTPReadsIt: for urlencoded bodies and queries, Parse
// reads the fields net/http's Request.Form would hold.
func TestFormAsNetHTTPReadsIt(t *testing.T) {
	for _, c := range []struct{ query, body string }{
		{"", "uid=u1&message=hi"},
		{"message=hi", "uid=u1"},
		{"", "ui%64=u1&mess%61ge=h+i&other=1"},
		{"x=1&y=2", "message=%E4%BD%A0%E5%A5%BD&uid=%F0%9F%98%80"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/send?"+c.query, strings.NewReader(c.body))
		r.Header.Set("Content-Type", typeForm)
		if err := r.ParseForm(); err != nil {
			t.Fatal(err)
		}
		got, err := Parse(typeForm, c.query, []byte(c.body), Limits{MaxMessageSize: 100, MaxMulticast: 1})
		if err != nil || got.UIDs[0] != r.Form.Get("uid") || got.Message != r.Form.Get("message") {
			t.Errorf("Parse(%q, %q) = %+v, %v; net/http reads uid %q, message %q", c.query, c.body, got, err, r.Form.Get("uid"), r.Form.Get("message"))
		}
	}
}

func TestMaxBodyHoldsTheLargestRequest(t *testing.T) {
	lim := Limits{MaxMessageSize: 1000, MaxMulticast: 50}
	uids := make([]string, lim.MaxMulticast)
	escape := func(s string) string { // every byte as \u00XX: the longest spelling
		var b strings.Builder
		for _, c := range []byte(s) {
			fmt.Fprintf(&b, `\u%04x`, c)
		}
		return `"` + b.String() + `"`
	}
	for i := range uids {
		uids[i] = escape(strings.Repeat("a", stream.MaxUIDLen-3) + fmt.Sprintf("%03d", i))
	}
	msg := strings.Repeat(`\u00e9`, lim.MaxMessageSize/2) // 2 bytes each, 6 escaped
	body := `{"uids":[` + strings.Join(uids, ",") + `],"message":"` + msg + `"}`
	if int64(len(body)) > lim.MaxBody() {
		t.Fatalf("a valid body of %d bytes exceeds MaxBody %d", len(body), lim.MaxBody())
	}
	if req, err := Parse(typeJSON, "", []byte(body), lim); err != nil || len(req.UIDs) != lim.MaxMulticast || len(req.Message) != lim.MaxMessageSize {
		t.Fatalf("Parse(the largest body) = %d uids, %d bytes, %v", len(req.UIDs), len(req.Message), err)
	}
}

// FuzzParse: no content type, query or body panics the parser; whatever
// it refuses gets a 4xx with a one-line reason; whatever it accepts obeys
// every rule of the contract.
func FuzzParse(f *testing.F) {
	f.Add(typeForm, "", []byte("uid=u1&message=hi"))
	f.Add(typeJSON, "", []byte(`{"uid":"u1","message":"hi"}`))
	f.Add(typeJSON, "", []byte(`{"uids":["a","b","a"],"message":"x"}`))
	f.Add("application/json; charset=utf-8", "", []byte(`{"uid":"u1","message":"\u00e9\ud83d\ude00"}`))
	f.Add("multipart/form-data; boundary=xx", "", []byte("--xx\r\nContent-Disposition: form-data; name=\"uid\"\r\n\r\nu1\r\n--xx\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nhi\r\n--xx--\r\n"))
	f.Add("", "uid=u1&message=hi", []byte(""))
	f.Add("text/plain", "", []byte("uid=u1"))
	lim := Limits{MaxMessageSize: 64, MaxMulticast: 4}
	f.Fuzz(func(t *testing.T, contentType, query string, body []byte) {
		req, err := Parse(contentType, query, body, lim)
		if err != nil {
			if err.Status < 400 || err.Status > 499 || err.Reason == "" || strings.ContainsAny(err.Reason, "\r\n") {
				t.Fatalf("refusal %d %q: want a 4xx with a one-line reason", err.Status, err.Reason)
			}
			return
		}
		checkAccepted(t, req, lim)
		if mt, _, _ := mediaType(contentType); mt == typeForm || contentType == "" {
			// A form is read as net/http reads it.
			r := httptest.NewRequest(http.MethodPost, "/send?"+url.PathEscape(""), bytes.NewReader(body))
			r.URL.RawQuery = query
			r.Header.Set("Content-Type", contentType)
			if r.ParseForm() == nil && (r.Form.Get("uid") != req.UIDs[0] || r.Form.Get("message") != req.Message) {
				t.Fatalf("Parse read uid %q, message %q; net/http reads %q, %q", req.UIDs[0], req.Message, r.Form.Get("uid"), r.Form.Get("message"))
			}
		}
	})
}

// The parser on typical bodies:
//
//	go test -run '^$' -bench . -benchmem ./internal/sendreq
func BenchmarkParse(b *testing.B) {
	uids := make([]string, 100)
	for i := range uids {
		uids[i] = fmt.Sprintf("%q", fmt.Sprintf("user-%d", i))
	}
	bodies := []struct{ name, ct, body string }{
		{"form", typeForm, "uid=user-42&message=" + url.QueryEscape(`{"type":"notice","text":"a typical payload of about one hundred bytes, give or take a few"}`)},
		{"json", typeJSON, `{"uid":"user-42","message":"{\"type\":\"notice\",\"text\":\"a typical payload of about one hundred bytes, give or take a few\"}"}`},
		{"json-multicast-100", typeJSON, `{"uids":[` + strings.Join(uids, ",") + `],"message":"hello everyone"}`},
	}
	lim := Limits{MaxMessageSize: 65536, MaxMulticast: 10000}
	for _, bb := range bodies {
		b.Run(bb.name, func(b *testing.B) {
			body := []byte(bb.body)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(bb.ct, "", body, lim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// checkAccepted fails t unless req obeys every rule of the contract.
func checkAccepted(t *testing.T, req Request, lim Limits) {
	t.Helper()
	if len(req.UIDs) == 0 || (!req.Multicast && len(req.UIDs) != 1) || len(req.UIDs) > lim.MaxMulticast {
		t.Fatalf("accepted uids %q (multicast %v)", req.UIDs, req.Multicast)
	}
	seen := map[string]bool{}
	for _, uid := range req.UIDs {
		if stream.CheckUID(uid) != nil || seen[uid] {
			t.Fatalf("accepted uid %q (bad or duplicate) in %q", uid, req.UIDs)
		}
		seen[uid] = true
	}
	if req.Message == "" || len(req.Message) > lim.MaxMessageSize || !utf8.ValidString(req.Message) {
		t.Fatalf("accepted message %q", req.Message)
	}
}
