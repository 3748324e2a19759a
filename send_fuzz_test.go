package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"unicode/utf8"
)

// FuzzParseSendRequest: no body or Content-Type panics the /send parser,
// it answers as the parser before the fast paths did, and whatever it
// accepts obeys every rule of the contract.
func FuzzParseSendRequest(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", []byte("uid=u1&message=hi"))
	f.Add("application/json", []byte(`{"uid":"u1","message":"hi"}`))
	f.Add("application/json", []byte(`{"uids":["a","b","a"],"message":"x"}`))
	f.Add("application/json; charset=utf-8", []byte(`{"uid":"u1","message":"\u00e9\ud83d\ude00"}`))
	f.Add("multipart/form-data; boundary=xx", []byte("--xx\r\nContent-Disposition: form-data; name=\"uid\"\r\n\r\nu1\r\n--xx\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nhi\r\n--xx--\r\n"))
	f.Add("", []byte(""))
	f.Add("text/plain", []byte("uid=u1"))
	lim := sendLimits{MaxMessageSize: 64, MaxMulticast: 4}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/send", bytes.NewReader(body))
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		req, herr := parseSendRequest(r, lim)
		ref := httptest.NewRequest(http.MethodPost, "/send", bytes.NewReader(body))
		if contentType != "" {
			ref.Header.Set("Content-Type", contentType)
		}
		if refReq, refErr := refParseSendRequest(ref, lim); !reflect.DeepEqual(req, refReq) || !reflect.DeepEqual(herr, refErr) {
			t.Fatalf("parseSendRequest = %#v, %#v\nbefore:             %#v, %#v", req, herr, refReq, refErr)
		}
		if herr != nil {
			if herr.code < 400 || herr.code > 499 || herr.reason == "" || bytes.ContainsAny([]byte(herr.reason), "\r\n") {
				t.Fatalf("refusal %d %q: want a 4xx with a one-line reason", herr.code, herr.reason)
			}
			return
		}
		if len(req.UIDs) == 0 || (!req.Multicast && len(req.UIDs) != 1) || len(req.UIDs) > lim.MaxMulticast {
			t.Fatalf("accepted uids %q (multicast %v)", req.UIDs, req.Multicast)
		}
		seen := map[string]bool{}
		for _, uid := range req.UIDs {
			if checkUID(uid) != nil || seen[uid] {
				t.Fatalf("accepted uid %q (bad or duplicate) in %q", uid, req.UIDs)
			}
			seen[uid] = true
		}
		if req.Message == "" || len(req.Message) > lim.MaxMessageSize || !utf8.ValidString(req.Message) {
			t.Fatalf("accepted message %q", req.Message)
		}
	})
}
