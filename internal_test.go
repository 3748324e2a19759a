package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"go-pusher/internal/sendreq"
)

// TestSendFrontsAgree: the same raw requests, on the public listener
// (net/http) and on the internal one (fasthttp), get the same status,
// body and content type: bodies over the limit, chunked bodies, Expect:
// 100-continue, HTTP/1.0, and requests pipelined on one connection.
func TestSendFrontsAgree(t *testing.T) {
	args := []string{"-max-message-size", "8", "-max-multicast", "2"}
	pub := startServer(t, testConfig(t, args...))
	in := startServer(t, testConfig(t, append(args, "-internal-addr", "127.0.0.1:0")...))
	for _, ts := range []*testServer{pub, in} {
		ts.dial("u")
	}
	limit := sendreq.Limits{MaxMessageSize: 8, MaxMulticast: 2}.MaxBody()
	auth := "Authorization: Bearer " + testAPIKey + "\r\n"
	form := "Content-Type: application/x-www-form-urlencoded\r\n"
	post := func(head, body string) string {
		return "POST /send HTTP/1.1\r\nHost: x\r\n" + head + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
	}
	requests := []struct{ name, raw string }{
		{"plain", post(auth+form, "uid=u&message=hi")},
		{"offline", post(auth+form, "uid=v&message=hi")},
		{"too large", post(auth+form, "uid=u&message="+strings.Repeat("a", int(limit)))},
		{"announced too large", "POST /send HTTP/1.1\r\nHost: x\r\n" + auth + form + fmt.Sprintf("Content-Length: %d\r\n\r\n", limit+1)},
		{"chunked", "POST /send HTTP/1.1\r\nHost: x\r\n" + auth + form + "Transfer-Encoding: chunked\r\n\r\n6\r\nuid=u&\r\na\r\nmessage=hi\r\n0\r\n\r\n"},
		{"expect continue", "POST /send HTTP/1.1\r\nHost: x\r\n" + auth + form + "Expect: 100-continue\r\nContent-Length: 16\r\n\r\nuid=u&message=hi"},
		{"http/1.0", "POST /send HTTP/1.0\r\n" + auth + form + "Content-Length: 16\r\n\r\nuid=u&message=hi"},
		{"no key", post(form, "uid=u&message=hi")},
		{"get", "GET /send HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n"},
		{"json", post(auth+"Content-Type: application/json\r\n", `{"uids":["u","v"],"message":"hi"}`)},
		{"bad json", post(auth+"Content-Type: application/json\r\n", `{"uid":"u","message":1}`)},
		{"too large without a key", post(form, "uid=u&message="+strings.Repeat("a", int(limit)))},
		{"too large, wrong method", strings.Replace(post(auth+form, "uid=u&message="+strings.Repeat("a", int(limit))), "POST", "PUT", 1)},
		{"malformed multipart", post(auth+"Content-Type: multipart/form-data; boundary=xx\r\n", "--xx\r\nContent-Disposition: form-data; name=\"uid\"\r\n\r\nu")},
	}
	for _, r := range requests {
		t.Run(r.name, func(t *testing.T) {
			want := rawSend(t, pub.Addr(), r.raw)
			got := rawSend(t, in.InternalAddr(), r.raw)
			// Ids differ from server to server.
			id := regexp.MustCompile(`"id":"[0-9a-v]{20}"`)
			want.body, got.body = id.ReplaceAllString(want.body, `"id":""`), id.ReplaceAllString(got.body, `"id":""`)
			if got != want {
				t.Errorf("internal (fasthttp): %+v\npublic (net/http):   %+v", got, want)
			}
		})
	}
	// Pipelined: three requests written at once, three answers in order.
	c, err := net.Dial("tcp", in.InternalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(post(auth+form, "uid=u&message=a") + post(auth+form, "uid=v&message=b") + post(auth+form, "uid=u&message=c"))); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i, want := range []int{200, 404, 200} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined answer %d: %v", i, err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatalf("pipelined answer %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("pipelined answer %d = %d, want %d", i, resp.StatusCode, want)
		}
	}
}

type rawAnswer struct {
	status            int
	contentType, body string
	allow, challenge  string
}

// rawSend writes raw to addr and reads the answer (after a 100 Continue).
func rawSend(t *testing.T, addr, raw string) rawAnswer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusContinue {
			continue
		}
		return rawAnswer{resp.StatusCode, resp.Header.Get("Content-Type"), string(b), resp.Header.Get("Allow"), resp.Header.Get("WWW-Authenticate")}
	}
}

// TestQuerySendsOnOneConnection: the article's clients put uid and
// message in the query; on fasthttp the query's buffer is the
// connection's, reused by its next request, so what /send keeps of it
// must be copied. 300 such requests pipelined on one connection reach
// the client each as it was sent.
func TestQuerySendsOnOneConnection(t *testing.T) {
	ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0", "-send-buffer", "1000"))
	conn := ts.dial("uu")
	c, err := net.Dial("tcp", ts.InternalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var reqs strings.Builder
	for i := range 300 {
		fmt.Fprintf(&reqs, "POST /send?uid=uu&message=msg-%04d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\n\r\n", i, testAPIKey)
	}
	if _, err := c.Write([]byte(reqs.String())); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if got, want := readText(t, conn), fmt.Sprintf("msg-%04d", i); got != want {
			t.Fatalf("message %d = %q, want %q", i, got, want)
		}
	}
}
