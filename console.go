package main

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"time"
)

// consoleFiles is the console page: plain HTML, CSS and JavaScript with no
// build step and nothing fetched from elsewhere, so it works offline, and
// the client library it runs on, clients/js, whose built file is committed
// so that go build needs no npm (scripts/test-js.sh checks that it matches
// its source). The files are named one by one so that a missing one fails
// the build.
//
//go:embed console/index.html console/console.js console/console.css console/favicon.svg
//go:embed clients/js/dist/index.js
var consoleFiles embed.FS

// consoleAsset is one file of the console page, ready to serve.
type consoleAsset struct {
	contentType string
	etag        string
	body        []byte
}

// consoleHandler serves the console page at / and its own files beside it;
// every other path is 404, so the catch-all "/" route exposes nothing else
// (no directory listings, no /index.html alias).
func consoleHandler() http.Handler {
	files := map[string]struct{ name, contentType string }{
		"/":            {"console/index.html", "text/html; charset=utf-8"},
		"/console.js":  {"console/console.js", "text/javascript; charset=utf-8"},
		"/console.css": {"console/console.css", "text/css; charset=utf-8"},
		"/favicon.svg": {"console/favicon.svg", "image/svg+xml"},
		// An ES module, which browsers run only with a JavaScript type.
		"/pusher.js": {"clients/js/dist/index.js", "text/javascript; charset=utf-8"},
	}
	assets := make(map[string]consoleAsset, len(files))
	for path, f := range files {
		body, err := consoleFiles.ReadFile(f.name)
		if err != nil {
			// The embed directive names every file: the build guarantees them.
			panic("console: embedded file missing: " + err.Error())
		}
		sum := sha256.Sum256(body)
		assets[path] = consoleAsset{
			contentType: f.contentType,
			etag:        `"` + hex.EncodeToString(sum[:12]) + `"`,
			body:        body,
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := assets[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		setConsoleSecurityHeaders(h, r.Host)
		h.Set("Content-Type", a.contentType)
		// The files change only with the binary and their URLs carry no
		// version, so the browser revalidates each time (a cheap 304 thanks
		// to the ETag) instead of running an old script after an upgrade.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		// ServeContent answers If-None-Match, HEAD and Range.
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	})
}

// setConsoleSecurityHeaders locks the page down to its own files: scripts
// and styles from this origin only (the page has no inline ones), network
// access only to this origin (fetch /send, WebSocket /ws), no framing
// (clickjacking the send button), no referrer.
func setConsoleSecurityHeaders(h http.Header, host string) {
	connect := "'self'"
	// 'self' covers ws: and wss: in CSP level 3, but older browsers (Safari
	// before 15.4) need them spelled out. The Host header goes into the
	// policy only when it is a plain host[:port], so it cannot add
	// directives.
	if plainHost(host) {
		connect += " ws://" + host + " wss://" + host
	}
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src "+connect+"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// plainHost reports whether host is made of the characters of a DNS name,
// an IPv4 or bracketed IPv6 address and a port, and nothing else.
func plainHost(host string) bool {
	if host == "" || len(host) > 261 {
		return false
	}
	for _, c := range host {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}
