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
		{"/pusher.js", "text/javascript; charset=utf-8", http.StatusOK},
		{"/clients/js/dist/index.js", "", http.StatusNotFound},
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
	// Every file the page refers to is served, and so is every module
	// console.js imports.
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(html, -1) {
		if w := consoleGet(http.MethodGet, "/"+m[1], "h", nil); w.Code != http.StatusOK {
			t.Errorf("index.html refers to %q: GET = %d, want 200", m[1], w.Code)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^import .* from "\./([^"]+)";$`).FindAllStringSubmatch(readConsoleFile(t, "console.js"), -1) {
		if w := consoleGet(http.MethodGet, "/"+m[1], "h", nil); w.Code != http.StatusOK {
			t.Errorf("console.js imports %q: GET = %d, want 200", m[1], w.Code)
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

// TestConsoleRunsTheClientLibrary: the page listens with the client
// library of clients/js, not a copy of its own: console.js is a module
// that imports connectPusher from pusher.js and opens no WebSocket
// itself, and /pusher.js is the library's committed build, which
// scripts/test-js.sh checks against its source and tests.
func TestConsoleRunsTheClientLibrary(t *testing.T) {
	html := readConsoleFile(t, "index.html")
	if !strings.Contains(html, `<script type="module" src="console.js"></script>`) {
		t.Error(`index.html does not load console.js as a module (type="module"), so its import would fail`)
	}
	js := readConsoleFile(t, "console.js")
	if !strings.Contains(js, "\nimport { connectPusher } from \"./pusher.js\";\n") {
		t.Error("console.js does not import connectPusher from ./pusher.js")
	}
	if strings.Contains(js, "new WebSocket(") {
		t.Error("console.js opens a WebSocket itself; the client library should do it")
	}
	lib, err := os.ReadFile("clients/js/dist/index.js")
	if err != nil {
		t.Fatal(err)
	}
	w := consoleGet(http.MethodGet, "/pusher.js", "h", nil)
	if w.Body.String() != string(lib) {
		t.Errorf("GET /pusher.js: %d bytes that differ from clients/js/dist/index.js (%d bytes)", w.Body.Len(), len(lib))
	}
	if !strings.Contains(string(lib), "export function connectPusher(") {
		t.Error("clients/js/dist/index.js does not export connectPusher")
	}
}

func TestConsoleDisabled(t *testing.T) {
	ts := startServer(t, testConfig(t, "-console=false"))
	for _, path := range []string{"/", "/console.js", "/pusher.js"} {
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

// TestREADMEShowsTheClientExample: the client example in README.md and
// clients/js/README.md is clients/js/examples/listen.js, character for
// character, and scripts/test-js.sh type-checks that file against the
// library's declarations (dist/index.d.ts): an example that calls the
// library wrongly fails there.
func TestREADMEShowsTheClientExample(t *testing.T) {
	example, err := os.ReadFile("clients/js/examples/listen.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"README.md", "clients/js/README.md"} {
		readme, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), "```js\n"+string(example)+"```\n") {
			t.Errorf("%s's client example differs from clients/js/examples/listen.js; copy it from there", name)
		}
	}
}
