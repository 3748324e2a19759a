package main

import (
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

// consoleGet sends one request to a fresh console handler.
func consoleGet(method, path, host string, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	r.Host = host
	maps.Copy(r.Header, header)
	w := httptest.NewRecorder()
	consoleHandler().ServeHTTP(w, r)
	return w
}

func TestConsoleServesOnlyItsFiles(t *testing.T) {
	tests := []struct {
		path, contentType string
		code              int
	}{
		{"/", "text/html; charset=utf-8", http.StatusOK},
		{"/console.js", "text/javascript; charset=utf-8", http.StatusOK},
		{"/console.css", "text/css; charset=utf-8", http.StatusOK},
		{"/favicon.svg", "image/svg+xml", http.StatusOK},
		{"/index.html", "", http.StatusNotFound},
		{"/console/", "", http.StatusNotFound},
		{"/console/index.html", "", http.StatusNotFound},
		{"/console.js/", "", http.StatusNotFound},
		{"/favicon.ico", "", http.StatusNotFound},
		{"/console.go", "", http.StatusNotFound},
		{"/send", "", http.StatusNotFound}, // the public listener with -internal-addr
	}
	for _, tt := range tests {
		w := consoleGet(http.MethodGet, tt.path, "127.0.0.1:8181", nil)
		if w.Code != tt.code {
			t.Errorf("GET %s = %d, want %d", tt.path, w.Code, tt.code)
			continue
		}
		if tt.code != http.StatusOK {
			continue
		}
		h := w.Header()
		if got := h.Get("Content-Type"); got != tt.contentType {
			t.Errorf("GET %s Content-Type = %q, want %q", tt.path, got, tt.contentType)
		}
		for name, want := range map[string]string{
			"X-Content-Type-Options": "nosniff",
			"X-Frame-Options":        "DENY",
			"Cache-Control":          "no-cache",
			"Referrer-Policy":        "no-referrer",
		} {
			if got := h.Get(name); got != want {
				t.Errorf("GET %s %s = %q, want %q", tt.path, name, got, want)
			}
		}
		if h.Get("ETag") == "" || w.Body.Len() == 0 {
			t.Errorf("GET %s: ETag %q, %d bytes; want both", tt.path, h.Get("ETag"), w.Body.Len())
		}
	}
}

func TestConsoleSecurityPolicy(t *testing.T) {
	tests := []struct {
		host, connect string
	}{
		{"127.0.0.1:8181", "connect-src 'self' ws://127.0.0.1:8181 wss://127.0.0.1:8181;"},
		{"push.example.com", "connect-src 'self' ws://push.example.com wss://push.example.com;"},
		{"[::1]:8181", "connect-src 'self' ws://[::1]:8181 wss://[::1]:8181;"},
		// A Host that could add a directive stays out of the policy.
		{"a; script-src *", "connect-src 'self';"},
		{"a,b", "connect-src 'self';"},
		{"", "connect-src 'self';"},
	}
	for _, tt := range tests {
		csp := consoleGet(http.MethodGet, "/", tt.host, nil).Header().Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none';", "script-src 'self';", "style-src 'self';", tt.connect, "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("Host %q: Content-Security-Policy = %q, want it to contain %q", tt.host, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("Host %q: Content-Security-Policy = %q allows unsafe sources", tt.host, csp)
		}
	}
}

func TestConsoleConditionalHeadAndMethods(t *testing.T) {
	etag := consoleGet(http.MethodGet, "/console.js", "h", nil).Header().Get("ETag")
	if w := consoleGet(http.MethodGet, "/console.js", "h", http.Header{"If-None-Match": {etag}}); w.Code != http.StatusNotModified {
		t.Errorf("GET /console.js If-None-Match its ETag = %d, want 304", w.Code)
	}
	if w := consoleGet(http.MethodHead, "/", "h", nil); w.Code != http.StatusOK || w.Body.Len() != 0 {
		t.Errorf("HEAD / = %d with %d bytes, want 200 and no body", w.Code, w.Body.Len())
	}
	w := consoleGet(http.MethodPost, "/", "h", nil)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST / = %d Allow %q, want 405 Allow %q", w.Code, w.Header().Get("Allow"), "GET, HEAD")
	}
}

// TestConsoleAssetsAreStrictAndOffline: the page needs nothing from
// elsewhere and has no inline script, style or event handler, which the
// Content-Security-Policy would block.
func TestConsoleAssetsAreStrictAndOffline(t *testing.T) {
	html := readConsoleFile(t, "index.html")
	for _, tag := range regexp.MustCompile(`(?i)<script[^>]*>`).FindAllString(html, -1) {
		if !strings.Contains(tag, ` src="`) {
			t.Errorf("index.html has an inline script: %s", tag)
		}
	}
	for _, re := range []string{`(?i)<style`, `(?i)\sstyle=`, `(?i)\son[a-z]+=`, `(?i)javascript:`} {
		if m := regexp.MustCompile(re).FindString(html); m != "" {
			t.Errorf("index.html has %q, which the policy blocks", m)
		}
	}
	// Every file the page refers to is served.
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(html, -1) {
		if w := consoleGet(http.MethodGet, "/"+m[1], "h", nil); w.Code != http.StatusOK {
			t.Errorf("index.html refers to %q: GET = %d, want 200", m[1], w.Code)
		}
	}
	for _, name := range []string{"index.html", "console.js", "console.css"} {
		if body := readConsoleFile(t, name); strings.Contains(body, "://") || strings.Contains(body, "@import") {
			t.Errorf("%s refers to another site: the page must work offline", name)
		}
	}
	if js := readConsoleFile(t, "console.js"); strings.Contains(js, "innerHTML") || strings.Contains(js, "insertAdjacentHTML") {
		t.Errorf("console.js parses HTML: messages are untrusted, use textContent")
	}
}

func readConsoleFile(t *testing.T, name string) string {
	t.Helper()
	b, err := consoleFiles.ReadFile("console/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// referenceClient returns the reference client of console/console.js: the
// lines from "// BEGIN reference client" to "// END reference client",
// both included, which the README shows verbatim.
func referenceClient(t *testing.T) string {
	t.Helper()
	js := readConsoleFile(t, "console.js")
	const begin, end = "// BEGIN reference client\n", "// END reference client\n"
	if strings.Count(js, begin) != 1 || strings.Count(js, end) != 1 {
		t.Fatalf("console.js: want one %q and one %q line", strings.TrimSpace(begin), strings.TrimSpace(end))
	}
	i, j := strings.Index(js, begin), strings.Index(js, end)
	if j < i {
		t.Fatalf("console.js: %q comes before %q", strings.TrimSpace(end), strings.TrimSpace(begin))
	}
	return js[i : j+len(end)]
}

func TestConsoleReferenceClientIsShort(t *testing.T) {
	snippet := referenceClient(t)
	if n := strings.Count(snippet, "\n"); n > 60 {
		t.Errorf("the reference client is %d lines; the README shows it whole, keep it under 60", n)
	}
	for _, want := range []string{"new WebSocket(", "onmessage", "onclose", "1008", "authenticate error: ", "format=json", "&since=", `"recovered"`, `"refreshed"`, "refresh:"} {
		if !strings.Contains(snippet, want) {
			t.Errorf("the reference client lacks %q", want)
		}
	}
}

func TestConsoleDisabled(t *testing.T) {
	ts := startServer(t, testConfig(t, "-console=false"))
	for _, path := range []string{"/", "/console.js"} {
		if code, _ := ts.get(path); code != http.StatusNotFound {
			t.Errorf("-console=false: GET %s = %d, want 404", path, code)
		}
	}
}

func TestConsoleOnPublicListener(t *testing.T) {
	ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0"))
	resp, err := ts.client.Get("http://" + ts.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("GET / on the public listener = %d %q, want 200 text/html", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if code, _ := ts.get("/"); code != http.StatusNotFound {
		t.Errorf("GET / on the internal listener = %d, want 404", code)
	}
}

// TestREADMEShowsTheReferenceClient: the README's browser snippet is the
// console page's own code, character for character.
func TestREADMEShowsTheReferenceClient(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```js\n"+referenceClient(t)) {
		t.Error("README.md's browser snippet differs from the reference client in console/console.js; copy it from there")
	}
}
