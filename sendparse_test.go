package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// refParseSendRequest is parseSendRequest as it was before the fast paths,
// on the slow paths alone (parseSendForm, decodeSendJSON): the
// differential tests below hold the new parser to it, byte for byte.
func refParseSendRequest(r *http.Request, lim sendLimits) (sendRequest, *httpError) {
	r.Body = http.MaxBytesReader(nil, r.Body, lim.maxBody())
	var req sendRequest
	var herr *httpError
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	switch {
	case ct == "":
		if n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 1)); n > 0 {
			return req, &httpError{http.StatusUnsupportedMediaType, "Content-Type is required with a body"}
		}
		req, herr = parseSendForm(r, false, 0)
	case err != nil:
		return req, &httpError{http.StatusUnsupportedMediaType, "malformed Content-Type"}
	case mt == "application/json":
		req, herr = refParseSendJSON(r)
	case mt == "application/x-www-form-urlencoded", mt == "multipart/form-data":
		req, herr = parseSendForm(r, mt == "multipart/form-data", lim.maxBody())
	default:
		return req, &httpError{http.StatusUnsupportedMediaType, fmt.Sprintf("unsupported Content-Type %q: use application/json, application/x-www-form-urlencoded or multipart/form-data", mt)}
	}
	if herr != nil {
		return req, herr
	}
	return req, req.check(lim)
}

// refParseSendJSON is the JSON path without its fast path: the whole
// body to decodeSendJSON. (The form's is parseSendForm itself.)
func refParseSendJSON(r *http.Request) (sendRequest, *httpError) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return sendRequest{}, bodyError(err, "read body")
	}
	return decodeSendJSON(body)
}

// diffLimits are small, so that the fuzzer reaches every limit.
func diffLimits() sendLimits { return sendLimits{MaxMessageSize: 64, MaxMulticast: 4} }

// padUnit times a fuzzed pad (0 to 255) spans the body limit of
// diffLimits (7564 bytes): the fuzzers reach it with small inputs, which
// they mutate and minimize quickly, where an 8 kB seed stalls them.
const padUnit = 32

// newSendReq builds a /send request. unknownLength hides the length and
// hands the body out in pieces, as a chunked upload does.
func newSendReq(method, contentType, rawQuery string, body []byte, unknownLength bool) *http.Request {
	r := httptest.NewRequest(method, "/send", bytes.NewReader(body))
	r.URL.RawQuery = rawQuery // set, not parsed: the fuzzer's queries need not be valid URLs
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	if unknownLength {
		r.ContentLength = -1
		r.Body = io.NopCloser(iotest.HalfReader(bytes.NewReader(body)))
	}
	return r
}

// sameAsBefore fails t unless parseSendRequest and refParseSendRequest
// agree on two identical requests built by mk.
func sameAsBefore(t *testing.T, mk func() *http.Request) {
	t.Helper()
	sameAsBeforeWith(t, diffLimits(), mk)
}

func sameAsBeforeWith(t *testing.T, lim sendLimits, mk func() *http.Request) {
	t.Helper()
	gotReq, gotErr := parseSendRequest(mk(), lim)
	wantReq, wantErr := refParseSendRequest(mk(), lim)
	if !reflect.DeepEqual(gotReq, wantReq) || !reflect.DeepEqual(gotErr, wantErr) {
		t.Fatalf("parseSendRequest = %#v, %#v\nbefore:             %#v, %#v", gotReq, gotErr, wantReq, wantErr)
	}
}

// FuzzSendJSONDiff: for any JSON body, the fast path changes nothing.
func FuzzSendJSONDiff(f *testing.F) {
	for _, s := range []string{
		`{"uid":"u1","message":"hi"}`,
		" \t\n{ \"message\" : \"hi\" ,\r\n\"uid\" : \"u1\" } \r\n",
		`{"uids":["a","b","a"],"message":"x"}`,
		`{"uids":[ "a" , "b" ] , "message":"x"}`,
		`{"uids":[],"message":"x"}`, `{"uids":null,"message":"x"}`, `{"uids":["a",null],"message":"x"}`,
		`{"uids":["a","b","c","d","e"],"message":"x"}`, `{"uids":["a",],"message":"x"}`,
		`{"uid":"u1","uids":["u1"],"message":"x"}`, `{"uids":["u1"],"uid":"u1","message":"x"}`,
		`{"uid":"u\"1","message":"hi"}`, `{"uid":"u1","message":"a\/b\\c\n"}`,
		`{"uid":"u1","message":"\ud800"}`, `{"uid":"u1","message":"\ud83d\ude00"}`, `{"uid":"u1","message":"\u00e9"}`,
		`{"uid":"u1","message":"é世😀"}`, "{\"uid\":\"u1\",\"message\":\"\xff\"}",
		"{\"uid\":\"u1\",\"message\":\"\xed\xa0\x80\"}", "{\"uid\":\"u1\",\"message\":\"\x7f\"}",
		"{\"uid\":\"u1\",\"message\":\"a\tb\"}", "\xef\xbb\xbf{\"uid\":\"u1\",\"message\":\"hi\"}",
		`{"uid":"u1","uid":"u2","message":"hi"}`, `{"uid":"u1","message":"a","message":"b"}`,
		`{"UID":"u1","message":"hi"}`, `{"uid":"u1","Message":"hi"}`, `{"uid":"u1","message":"hi","x":1}`,
		`{"uid":null,"message":"hi"}`, `{"uid":1,"message":"hi"}`, `{"uid":"u1","message":{"a":"b"}}`,
		`{"uid":"u1","message":"hi"} {}`, `{"uid":"u1","message":"hi"}x`, `{"uid":"u1","message":"hi"}]`,
		`{"uid":"u1","message":"hi"}}`, `{"uid":"u1","message":"hi",}`, `{"uid":"u1" "message":"hi"}`,
		`{"uid":"u1","message":"hi"`, `{"uid":"u1","message":"hi`, `[{"uid":"u1","message":"hi"}]`,
		``, ` `, `{}`, `{ }`, `null`, `"x"`, `{"uid":"","message":"hi"}`, `{"uid":"u1","message":""}`,
		`{"uid":"u1","message":"` + strings.Repeat("a", 65) + `"}`,
		`{"uid":"` + strings.Repeat("u", 129) + `","message":"hi"}`,
		// Escapes: the fast path decodes these, or declines.
		`{"uid":"u1","message":"\"\\\/\b\f\n\r\t"}`, `{"uid":"u1","message":"{\"type\":\"order\",\"id\":42}"}`,
		`{"uid":"u1","message":"\u0000"}`, `{"uid":"u1","message":"a\u00e9\u00E9b"}`, `{"uid":"u1","message":"\u4e2d\u6587"}`,
		`{"uid":"u1","message":"\u007f\u0080\u07ff\u0800\ufffd\ufeff\uffff"}`,
		`{"uid":"u1","message":"\uD83D\uDE00"}`, `{"uid":"u1","message":"\udbff\udfff\ud800\udc00"}`,
		`{"uid":"u1","message":"x\ud800"}`, `{"uid":"u1","message":"\udc00"}`, `{"uid":"u1","message":"\udc00\ud800"}`,
		`{"uid":"u1","message":"\udc00\udc00"}`, `{"uid":"u1","message":"\udfff\udfff"}`,
		`{"uid":"u1","message":"\ud800\u0041"}`, `{"uid":"u1","message":"\ud800\ud800"}`, `{"uid":"u1","message":"\ud800\n"}`,
		`{"uid":"u1","message":"\ud800\u"}`, `{"uid":"u1","message":"\ud800\udc0"}`, `{"uid":"u1","message":"\ud800x\udc00"}`,
		`{"uid":"u1","message":"\u12g4"}`, `{"uid":"u1","message":"\u12"}`, `{"uid":"u1","message":"\u12`, `{"uid":"u1","message":"\u`,
		`{"uid":"u1","message":"\x41"}`, `{"uid":"u1","message":"\U0041"}`, `{"uid":"u1","message":"\'"}`, `{"uid":"u1","message":"\ "}`,
		`{"uid":"u1","message":"ab\""}`, `{"uid":"u1","message":"ab\"}`, `{"uid":"u1","message":"ab\\"}`, `{"uid":"u1","message":"ab\`,
		"{\"uid\":\"u1\",\"message\":\"a\x01b\"}", "{\"uid\":\"u1\",\"message\":\"a\x1f\\n\"}", "{\"uid\":\"u1\",\"message\":\"a\nb\"}",
		"{\"uid\":\"u\x00\",\"message\":\"hi\"}", "{\"uid\":\"u1\",\"message\":\"\\\x01\"}",
		`{"u\u0069d":"u1","message":"hi"}`, `{"\u0055ID":"u1","message":"hi"}`, `{"uid":"u1","mess\u0061ge":"hi"}`,
		`{"uids\"":["u1"],"message":"hi"}`, `{"ui\d":"u1","message":"hi"}`, `{"uid\n":"u1","message":"hi"}`,
		`{"uid":"u\/1","message":"hi"}`, `{"uid":"\u00e9","message":"hi"}`, `{"uid":"\ud800","message":"hi"}`,
		`{"uids":["a\nb","\u0061","a"],"message":"x"}`, `{"uids":["\"",  "\\"],"message":"x"}`,
		`{"uids":["a","\udc00"],"message":"x"}`, `{"uids":["a","b\q"],"message":"x"}`, `{"uids":["a\"],"message":"x"}`,
		`{"uid":"u1","message":"` + strings.Repeat(`\n`, 64) + `"}`, `{"uid":"u1","message":"` + strings.Repeat(`\n`, 65) + `"}`,
		`{"uid":"u1","message":"` + strings.Repeat(`\u00e9`, 32) + `"}`, `{"uid":"u1","message":"` + strings.Repeat(`\u00e9`, 33) + `"}`,
		`{"uid":"` + strings.Repeat(`\t`, 129) + `","message":"hi"}`,
	} {
		f.Add([]byte(s), false, uint8(0))
		f.Add([]byte(s), true, uint8(0))
	}
	f.Add([]byte(`{"uid":"u1","message":"hi"}`), false, uint8(200)) // just under the body limit
	f.Add([]byte(`{"uid":"u1","message":"hi"}`), true, uint8(255))  // over it
	f.Fuzz(func(t *testing.T, body []byte, unknownLength bool, pad uint8) {
		body = append(bytes.Repeat([]byte(" "), int(pad)*padUnit), body...)
		sameAsBefore(t, func() *http.Request {
			return newSendReq(http.MethodPost, "application/json", "", body, unknownLength)
		})
		if fast, ok := parseSendJSONFast(body); ok {
			slow, herr := decodeSendJSON(body)
			if herr != nil || !reflect.DeepEqual(fast, slow) {
				t.Fatalf("parseSendJSONFast = %#v, decodeSendJSON = %#v, %v", fast, slow, herr)
			}
		}
	})
}

// FuzzSendFormDiff: for any urlencoded body and URL query, the fast path
// changes nothing.
func FuzzSendFormDiff(f *testing.F) {
	for _, s := range [][2]string{
		{"", "uid=u1&message=hi"}, {"", "message=hi&uid=u1"}, {"uid=u1", "message=hi"}, {"message=hi", "uid=u1"},
		{"uid=u2", "uid=u1&message=hi"}, {"message=a", "uid=u1&message=b"}, {"", "uid=u1&uid=u2&message=hi"},
		{"", "uid=u1&message=h%C3%A9+there%21"}, {"", "ui%64=u1&m%65ssage=hi"}, {"", "uid=u1&Message=hi"},
		{"", "uid=u1&message=%zz"}, {"", "uid=u1&message=%4"}, {"", "uid=u1&message=%"}, {"x=%zz", "uid=u1&message=hi"},
		{"", "x%=1&uid=u1&message=hi"}, {"", "uid=u1;message=hi"}, {"a;b", "uid=u1&message=hi"}, {"", "uid=u1&message=a;b"},
		{"", "uid=u1&message=hi&x=1&&&"}, {"", "&&uid=u1&message=hi&"}, {"", "uid&message"}, {"", "uid=&message="},
		{"", "uid=u1&message=a=b=c"}, {"", "uid=u1&message=%FF%FE"}, {"", "uid=u1&message=%ED%A0%80"},
		{"", "uid=u1&message=" + strings.Repeat("%41", 70)}, {"", "uid=u1&message=hi" + strings.Repeat("&a=b", 20)},
		{strings.Repeat("&", 10001), "uid=u1&message=hi"}, {"", ""}, {"uid=u1&message=hi", ""},
	} {
		f.Add(s[0], []byte(s[1]), false, uint8(0))
		f.Add(s[0], []byte(s[1]), true, uint8(0))
	}
	f.Add("", []byte("uid=u1&message=hi"), false, uint8(200)) // just under the body limit
	f.Add("", []byte("uid=u1&message=hi"), true, uint8(255))  // over it
	f.Fuzz(func(t *testing.T, rawQuery string, body []byte, unknownLength bool, pad uint8) {
		if pad > 0 {
			body = append(append([]byte("pad="), bytes.Repeat([]byte("a"), int(pad)*padUnit)...), append([]byte("&"), body...)...)
		}
		sameAsBefore(t, func() *http.Request {
			return newSendReq(http.MethodPost, "application/x-www-form-urlencoded", rawQuery, body, unknownLength)
		})
	})
}

// The fast paths must take the common shapes, or they save nothing.
func TestSendFastPathsHandleCommonShapes(t *testing.T) {
	jsonCases := []struct {
		body string
		want sendRequest
	}{
		{`{"uid":"u","message":"m"}`, sendRequest{UIDs: []string{"u"}, Message: "m"}},
		{" {\n \"message\": \"é 😀\",\t\"uid\": \"u\"\n}\n", sendRequest{UIDs: []string{"u"}, Message: "é 😀"}},
		{`{"uids":["a", "b","a"],"message":"m"}`, sendRequest{UIDs: []string{"a", "b", "a"}, Multicast: true, Message: "m"}},
		// A message that is JSON itself: escaped, as real messages often are.
		{`{"uid":"u","message":"{\"type\":\"order\",\"id\":42,\"note\":\"caf\u00e9\nA\\B\/C \ud83d\ude00\"}"}`,
			sendRequest{UIDs: []string{"u"}, Message: `{"type":"order","id":42,"note":"café` + "\n" + `A\B/C 😀"}`}},
		{`{"uids":["a\"b","\u4e2d"],"message":"\t"}`, sendRequest{UIDs: []string{`a"b`, "中"}, Multicast: true, Message: "\t"}},
	}
	for _, tc := range jsonCases {
		got, ok := parseSendJSONFast([]byte(tc.body))
		if !ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseSendJSONFast(%q) = %#v, %v; want %#v, true", tc.body, got, ok, tc.want)
		}
	}
	formCases := []struct {
		query, body string
		want        sendRequest
	}{
		{"", "uid=u&message=m", sendRequest{UIDs: []string{"u"}, Message: "m"}},
		{"", "message=%7B%22a%22%3A1%7D+x&uid=u&other=1", sendRequest{UIDs: []string{"u"}, Message: `{"a":1} x`}},
		{"uid=u", "message=m", sendRequest{UIDs: []string{"u"}, Message: "m"}},
	}
	for _, tc := range formCases {
		got, ok := parseSendFormFast([]byte(tc.body), []byte(tc.query))
		if !ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseSendFormFast(%q, %q) = %#v, %v; want %#v, true", tc.body, tc.query, got, ok, tc.want)
		}
	}
}

// The fast path declines lone or malformed surrogates (encoding/json makes
// them U+FFFD), bad escapes and escaped keys. Taking one might still decode
// the same, which the differential fuzzer would not notice.
func TestSendJSONFastDeclinesEscapes(t *testing.T) {
	for _, body := range []string{
		`{"uid":"u","message":"\ud800"}`, `{"uid":"u","message":"\udc00\ud800"}`, `{"uid":"u","message":"\udc00\udc00"}`,
		`{"uid":"u","message":"\ud800\u0041"}`, `{"uid":"u","message":"\ud800\ud800"}`, `{"uid":"u","message":"\udbffx"}`,
		`{"uid":"\udfff","message":"m"}`,
		`{"uids":["a","\ud83d"],"message":"m"}`, `{"uid":"u","message":"\u12g4"}`, `{"uid":"u","message":"\u12"}`,
		`{"uid":"u","message":"\x41"}`, `{"uid":"u","message":"a\`, "{\"uid\":\"u\",\"message\":\"\x01\"}",
		`{"u\u0069d":"u","message":"m"}`, `{"uid":"u","mess\u0061ge":"m"}`,
	} {
		if got, ok := parseSendJSONFast([]byte(body)); ok {
			t.Errorf("parseSendJSONFast(%q) = %#v, true; want a decline", body, got)
		}
	}
}

// An escaped string is decoded into one allocation, as a plain one is
// copied into one; a decline allocates nothing.
func TestSendJSONFastAllocs(t *testing.T) {
	for _, tc := range []struct {
		body string
		want float64
	}{
		{`{"uid":"user-1","message":"{\"type\":\"order\",\"id\":42}"}`, 3}, // the uids slice, uid, message
		{`{"uid":"u\n","message":"caf\u00e9 \ud83d\ude00"}`, 3},
		{`{"uid":"user-1","message":"plain"}`, 3},
		{`{"uids":["a\"","user-2"],"message":"\t"}`, 4},
		{`{"uid":"u","message":"\ud800"}`, 0},
	} {
		body := []byte(tc.body)
		if got := testing.AllocsPerRun(100, func() { parseSendJSONFast(body) }); got != tc.want {
			t.Errorf("parseSendJSONFast(%q): %v allocations, want %v", tc.body, got, tc.want)
		}
	}
}

// errAfter hands out data, then fails as a dropped connection does.
type errAfter struct {
	data []byte
	err  error
}

func (e *errAfter) Read(p []byte) (int, error) {
	if len(e.data) == 0 {
		return 0, e.err
	}
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, nil
}

// The cases the fuzzers do not build: other methods, a form parsed
// already, a body that fails half way, a Content-Length that lies.
func TestSendFastPathsEdgeRequests(t *testing.T) {
	const form, js = "application/x-www-form-urlencoded", "application/json"
	if max := diffLimits().maxBody(); max <= 200*padUnit+100 || max >= 255*padUnit {
		t.Fatalf("body limit %d: the fuzzers' padded seeds no longer straddle it", max)
	}
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		t.Run("method "+method, func(t *testing.T) {
			sameAsBefore(t, func() *http.Request {
				return newSendReq(method, form, "uid=q&message=m", []byte("uid=u1&message=hi"), false)
			})
		})
	}
	t.Run("form parsed already", func(t *testing.T) {
		sameAsBefore(t, func() *http.Request {
			r := newSendReq(http.MethodPost, form, "", []byte("uid=u1&message=hi"), false)
			r.Form = map[string][]string{"uid": {"other"}, "message": {"earlier"}}
			return r
		})
	})
	t.Run("fallback over 10 MB", func(t *testing.T) {
		// ParseForm caps a body at 10 MB unless it comes through a
		// MaxBytesReader: the fallback must still hand it one.
		big := sendLimits{MaxMessageSize: 2 << 20, MaxMulticast: 4}
		body := []byte("uid=u1" + strings.Repeat("&a=b", maxFastFormPairs) + "&message=" + strings.Repeat("m", 10<<20))
		sameAsBeforeWith(t, big, func() *http.Request {
			return newSendReq(http.MethodPost, form, "", body, false)
		})
	})
	for _, ct := range []string{form, js} {
		t.Run("read error "+ct, func(t *testing.T) {
			sameAsBefore(t, func() *http.Request {
				r := newSendReq(http.MethodPost, ct, "", nil, false)
				r.Body = io.NopCloser(&errAfter{[]byte("uid=u1&mess"), errors.New("connection reset")})
				return r
			})
		})
		for _, cl := range []int64{0, 3, 1 << 40} {
			t.Run(fmt.Sprintf("Content-Length %d %s", cl, ct), func(t *testing.T) {
				sameAsBefore(t, func() *http.Request {
					body := `{"uid":"u1","message":"hi"}`
					if ct == form {
						body = "uid=u1&message=hi"
					}
					r := newSendReq(http.MethodPost, ct, "", []byte(body), false)
					r.ContentLength = cl
					return r
				})
			})
		}
	}
}
