package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromiumPath is the browser for the console tests: PUSHER_TEST_CHROMIUM
// (scripts/test.sh sets it), or chromium on the PATH. Without one the test
// skips, except under CI=true, where a missing browser is a failure.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PUSHER_TEST_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PUSHER_TEST_CHROMIUM=%s: %v", p, err)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const msg = "no Chromium: install it (apt-get install chromium, or make test) or set PUSHER_TEST_CHROMIUM"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// browserTimeout bounds each step in the browser: a page that never gets
// where a test waits for fails the test instead of hanging it.
const browserTimeout = 15 * time.Second

// newBrowser starts a headless Chromium with a fresh profile and stops it,
// with every goroutine chromedp started, when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath(t)
	profile := t.TempDir() // removed after the browser stops: cleanups run last-in first-out
	output := &syncBuffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.NoSandbox, // runs as root in containers and CI
		chromedp.DisableGPU,
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1280, 860),
		chromedp.CombinedOutput(output),
	)
	// root ends the browser if it does not start in time; the browser's
	// life is bound to the context of its first action.
	root, stop := context.WithCancel(context.Background())
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(root, opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		// Close the browser gracefully, then free the allocator, which
		// waits for the process to exit.
		cctx, cancel := context.WithTimeout(ctx, browserTimeout)
		if err := chromedp.Cancel(cctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("closing Chromium: %v", err)
		}
		cancel()
		cancelBrowser()
		cancelAlloc()
		stop()
		if t.Failed() {
			t.Logf("Chromium output:\n%s", chromiumLog(output.String()))
		}
	})
	watchdog := time.AfterFunc(browserTimeout, stop)
	err := chromedp.Do(ctx)
	watchdog.Stop()
	if err != nil {
		t.Fatalf("start %s: %v\n%s", path, err, chromiumLog(output.String()))
	}
	return ctx
}

// chromiumLog is Chromium's output without its complaints about a missing
// D-Bus, which containers do not have and which change nothing here.
func chromiumLog(out string) string {
	lines := strings.SplitAfter(out, "\n")
	return strings.Join(slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, "dbus") }), "")
}

// page is one tab of the console page.
type page struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	problems []string // uncaught exceptions and errors the page logged
	sockets  []string // the URL of each WebSocket the page opened
}

// openPage opens url in a new tab of browser, closed when the test ends,
// and fails the test if the page throws or logs an error (a policy
// violation, for one).
func openPage(t *testing.T, browser context.Context, url string) *page {
	t.Helper()
	p := &page{t: t}
	// The tab lives at most a minute, whatever the test waits for. It has
	// a browser context of its own, like a fresh profile: closing it also
	// closes the sockets Chromium opened ahead of need, which the server's
	// graceful shutdown would otherwise wait 5 s for.
	bounded, cancelBound := context.WithTimeout(browser, time.Minute)
	ctx, cancel := chromedp.NewContext(bounded, chromedp.WithNewBrowserContext(), chromedp.WithListener(p.listen))
	p.ctx = ctx
	t.Cleanup(func() {
		cancel()
		cancelBound()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, msg := range p.problems {
			t.Errorf("console page: %s", msg)
		}
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	p.do("load "+url,
		chromedp.EmulateViewport(1200, 820),
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.ID("state")),
	)
	return p
}

// listen runs in chromedp's event loop: it only records.
func (p *page) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg = fmt.Sprintf("uncaught %s at %s:%d", d.Text, d.URL, d.LineNumber+1)
		if d.Exception != nil && d.Exception.Description != "" {
			msg += ": " + d.Exception.Description
		}
	case *network.EventWebSocketCreated:
		p.mu.Lock()
		p.sockets = append(p.sockets, ev.URL)
		p.mu.Unlock()
	case *log.EventEntryAdded:
		// Network errors are expected: refused reconnects, 4xx from /send.
		if ev.Entry.Level == log.EntryLevelError && ev.Entry.Source != log.EntrySourceNetwork {
			msg = fmt.Sprintf("%s error: %s", ev.Entry.Source, ev.Entry.Text)
		}
	}
	if msg != "" {
		p.mu.Lock()
		p.problems = append(p.problems, msg)
		p.mu.Unlock()
	}
}

// do runs actions within browserTimeout.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until expr is true in the page, checking on every change
// of the DOM, so that a state the page shows only briefly is seen too.
func (p *page) waitJS(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout+time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(browserTimeout))); err != nil {
		p.t.Fatalf("waiting for %s: %v\nstate: %s", what, err, p.stateText())
	}
}

// stateText is the connection state as the page shows it, for failure messages.
func (p *page) stateText() string {
	ctx, cancel := context.WithTimeout(p.ctx, time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("state").textContent`))
	if err != nil {
		return err.Error()
	}
	return s
}

// waitState waits until the page shows the connection state.
func (p *page) waitState(state string) {
	p.t.Helper()
	p.waitJS("state "+state, fmt.Sprintf(`document.getElementById("state").dataset.state === %q`, state))
}

// messages returns the texts of the message list, newest first.
func (p *page) messages() []string {
	p.t.Helper()
	return eval[[]string](p, `[...document.querySelectorAll("#messages li.message .text")].map(e => e.textContent)`)
}

// waitMessages waits until the message list holds n messages.
func (p *page) waitMessages(n int) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("%d messages", n), fmt.Sprintf(`document.querySelectorAll("#messages li.message").length === %d`, n))
}

// listItems returns the message list as the page shows it, newest first:
// "message <text> <offset label>", "replayed <text> <offset label>" for
// one recovered after a reconnect, or "status <recovered> <text>".
func (p *page) listItems() []string {
	p.t.Helper()
	return eval[[]string](p, `[...document.querySelectorAll("#messages li")].map(li =>
		li.classList.contains("status") ? "status " + li.dataset.recovered + " " + li.querySelector(".note").textContent
		: (li.classList.contains("replayed") ? "replayed " : "message ") + li.querySelector(".text").textContent + " " + li.querySelector(".offset").textContent)`)
}

// socketURLs returns the URL of each WebSocket the page opened so far.
func (p *page) socketURLs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sockets)
}

// screenshot saves the page as a PNG in SCREENSHOT_DIR, or else under the
// test's temporary folder (removed when the test ends), and returns it.
func (p *page) screenshot(name string) []byte {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("SCREENSHOT_DIR")
	if dir == "" {
		dir = p.t.TempDir()
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
	return png
}

// consoleURL is the console page of ts, with a token and API key in the
// fragment as scripts/run-dev.sh prints it, or none.
func consoleURL(ts *testServer, token, key string) string {
	u := "http://" + ts.Addr() + "/"
	if token == "" && key == "" {
		return u
	}
	return u + "#" + url.Values{"token": {token}, "key": {key}}.Encode()
}

// TestConsoleInBrowser runs the console page in headless Chromium against
// real servers. The subtests share one browser, each in its own tab.
func TestConsoleInBrowser(t *testing.T) {
	browser := newBrowser(t)

	t.Run("receives pushed messages", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		tok := ts.token("alice", time.Hour)
		p := openPage(t, browser, consoleURL(ts, tok, testAPIKey))
		p.waitState("open")
		waitFor(t, "alice registered", func() bool { return len(ts.hub.clients("alice")) == 1 })

		// The secrets filled the form and left the address bar.
		if got := eval[string](p, "location.href"); got != "http://"+ts.Addr()+"/" {
			t.Errorf("location.href = %q, want the page without its fragment", got)
		}
		fields := eval[[]string](p, `["token", "key", "uid"].map(id => document.getElementById(id).value)`)
		if want := []string{tok, testAPIKey, "alice"}; !slices.Equal(fields, want) {
			t.Errorf("token, key, uid fields = %q, want %q", fields, want)
		}

		sent := []string{
			"hello",
			`<img src=x onerror="document.title='pwned'"> & <b>not bold</b>`,
			"two\nlines, 世界 🚀",
		}
		for _, m := range sent {
			ts.sendOK("alice", m)
		}
		p.waitMessages(len(sent))
		got := p.messages()
		want := slices.Clone(sent)
		slices.Reverse(want) // newest first
		if !slices.Equal(got, want) {
			t.Errorf("messages = %q, want %q", got, want)
		}
		// Markup in a message stays text.
		if n := eval[int](p, `document.querySelectorAll("#messages img, #messages b").length`); n != 0 {
			t.Errorf("%d elements made from message text, want 0", n)
		}
		if title := eval[string](p, "document.title"); title != "go-pusher console" {
			t.Errorf("document.title = %q: a message ran as script", title)
		}
		times := eval[[]string](p, `[...document.querySelectorAll("#messages li time")].map(e => e.textContent)`)
		for _, tm := range times {
			if !regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d\d\d$`).MatchString(tm) {
				t.Errorf("message time %q, want hh:mm:ss.mmm", tm)
			}
		}
		if len(times) != len(sent) {
			t.Errorf("%d message times, want %d", len(times), len(sent))
		}
		p.screenshot("receive.png")

		// The send panel says whether its uid is online (POST /online).
		p.do("send from the page", chromedp.SetValue(chromedp.ID("message"), "from the page"), chromedp.Click(chromedp.ID("send")))
		p.waitJS("alice online", `document.getElementById("presence").dataset.online === "true"`)

		p.do("disconnect", chromedp.Click(chromedp.ID("disconnect")))
		p.waitState("closed")
		if state := p.stateText(); !strings.HasPrefix(state, "closed: 1000 normal") {
			t.Errorf("state after Disconnect = %q, want a normal close", state)
		}
		waitFor(t, "alice unregistered", func() bool { return len(ts.hub.clients("alice")) == 0 })
	})

	// A refused connection gets the text "authenticate error: <reason>";
	// pushed messages come as JSON, so one that reads like it is shown all
	// the same.
	t.Run("pushed message that looks like a refusal", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		p := openPage(t, browser, consoleURL(ts, ts.token("gina", time.Hour), ""))
		p.waitState("open")
		waitFor(t, "gina registered", func() bool { return len(ts.hub.clients("gina")) == 1 })
		ts.sendOK("gina", "authenticate error: only a message")
		p.waitMessages(1)
		if got := p.messages(); got[0] != "authenticate error: only a message" {
			t.Errorf("messages = %q", got)
		}
		if state := eval[string](p, `document.getElementById("state").dataset.state`); state != "open" {
			t.Errorf("state = %q, want open", state)
		}
	})

	t.Run("send panel", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		p := openPage(t, browser, consoleURL(ts, "", ""))
		p.do("connect",
			chromedp.SetValue(chromedp.ID("token"), ts.token("bob", time.Hour)),
			chromedp.Click(chromedp.ID("connect")),
		)
		p.waitState("open")
		waitFor(t, "bob registered", func() bool { return len(ts.hub.clients("bob")) == 1 })
		if uid := eval[string](p, `document.getElementById("uid").value`); uid != "bob" {
			t.Errorf("uid field = %q, want the token's uid %q", uid, "bob")
		}

		ts.sendOK("bob", "Deploy finished: v1.4.2 is live")
		p.waitMessages(1)
		p.do("send from the page",
			chromedp.SendKeys(chromedp.ID("key"), testAPIKey),
			chromedp.SendKeys(chromedp.ID("message"), "Hello from the console"),
			chromedp.Click(chromedp.ID("send")),
		)
		p.waitJS("/send answer 200", `document.getElementById("send-result").dataset.status === "200"`)
		p.waitMessages(2)
		if got := p.messages()[0]; got != "Hello from the console" {
			t.Errorf("newest message = %q, want the one the page sent", got)
		}
		if out := eval[string](p, `document.getElementById("send-result").textContent`); !strings.HasPrefix(out, "200 OK\n{\"id\":\"") {
			t.Errorf("send result = %q, want 200 OK and the id", out)
		}
		ts.sendOK("bob", `{"type":"order.shipped","order":1042}`)
		p.waitMessages(3)
		// The README shows this state: UPDATE_SCREENSHOT=1 go test -run TestConsoleInBrowser
		if png := p.screenshot("console.png"); os.Getenv("UPDATE_SCREENSHOT") == "1" {
			if err := os.WriteFile(filepath.Join("docs", "console.png"), png, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Log("updated docs/console.png")
		}

		p.do("send with a wrong key",
			chromedp.SetValue(chromedp.ID("key"), "wrong"),
			chromedp.Click(chromedp.ID("send")),
		)
		p.waitJS("/send answer 401", `document.getElementById("send-result").dataset.status === "401"`)
		p.do("send to a uid that is not connected",
			chromedp.SetValue(chromedp.ID("key"), testAPIKey),
			chromedp.SetValue(chromedp.ID("uid"), "nobody"),
			chromedp.Click(chromedp.ID("send")),
		)
		p.waitJS("/send answer 404", `document.getElementById("send-result").dataset.status === "404"`)
		if out := eval[string](p, `document.getElementById("send-result").textContent`); !strings.Contains(out, "client not found: nobody") {
			t.Errorf("send result = %q, want /send's reason", out)
		}
		if n := len(p.messages()); n != 3 {
			t.Errorf("%d messages after refused sends, want 3", n)
		}
	})

	t.Run("send panel without /send on the public listener", func(t *testing.T) {
		ts := startServer(t, testConfig(t, "-internal-addr", "127.0.0.1:0"))
		p := openPage(t, browser, consoleURL(ts, "", testAPIKey))
		p.do("send",
			chromedp.SendKeys(chromedp.ID("uid"), "carol"),
			chromedp.SendKeys(chromedp.ID("message"), "hi"),
			chromedp.Click(chromedp.ID("send")),
		)
		p.waitJS("/send answer 404", `document.getElementById("send-result").dataset.status === "404"`)
		if out := eval[string](p, `document.getElementById("send-result").textContent`); !strings.Contains(out, "-internal-addr") {
			t.Errorf("send result = %q, want it to explain -internal-addr", out)
		}
	})

	// A refused connection shows the reason and does not come back: only
	// the user can fix a token.
	refused := []struct {
		name, flag, uid string
		token           func(ts *testServer) string
		reason          string
	}{
		{"expired token", "", "dora", func(_ *testServer) string {
			tok, err := IssueToken(testSecret, "dora", time.Minute, time.Now().Add(-time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, "authenticate error: token is expired"},
		{"garbage token", "", "", func(*testServer) string { return "not.a.jwt" }, "authenticate error: token is malformed"},
		{"connection limit", "1", "erin", func(ts *testServer) string {
			ts.dial("erin") // takes erin's only connection
			return ts.token("erin", time.Hour)
		}, "connection limit"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			var flags []string
			if tt.flag != "" {
				flags = []string{"-max-conns-per-user", tt.flag}
			}
			ts := startServer(t, testConfig(t, flags...))
			p := openPage(t, browser, consoleURL(ts, tt.token(ts), ""))
			p.waitState("closed")
			state := p.stateText()
			if code := eval[string](p, `document.getElementById("state").dataset.code`); code != "1008" {
				t.Errorf("close code = %q, want 1008 (state %q)", code, state)
			}
			if !strings.Contains(state, tt.reason) {
				t.Errorf("state = %q, want the reason %q", state, tt.reason)
			}
			// Proving that nothing happens takes waiting: the first retry
			// would come within 0.5 s, so 1.5 s without one is enough.
			ctx, cancel := context.WithTimeout(p.ctx, 1500*time.Millisecond)
			defer cancel()
			_, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("state").dataset.attempts !== "1"`,
				chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(time.Second)))
			if !errors.Is(err, chromedp.ErrPollingTimeout) {
				t.Errorf("after 1008: %v, want no new attempt (state %q)", err, p.stateText())
			}
			if got := p.messages(); len(got) != 0 {
				t.Errorf("messages = %q, want none: the refusal is not a pushed message", got)
			}
			if disabled := eval[bool](p, `document.getElementById("connect").disabled`); disabled {
				t.Error("Connect is disabled after 1008, want it enabled for the user")
			}
		})
	}

	// Recovery: the page connects with format=json, and after a lost
	// connection reconnects with since= the last offset it showed.
	t.Run("recovers what it missed while disconnected", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		p, pageConn := listenWithCompanion(t, browser, ts, "hana")
		ts.sendOK("hana", "Deploy started: v1.4.2")
		p.waitMessages(1)
		offset := strings.TrimPrefix(eval[string](p, `document.querySelector("#messages li.message .offset").title`), "offset ")
		if !regexp.MustCompile(`^[0-9a-z]+:1$`).MatchString(offset) {
			t.Fatalf("the first message's offset is %q, want <epoch>:1", offset)
		}

		missWhileDown(t, ts, pageConn, "hana", `{"type":"order.shipped","order":1042}`, "Deploy finished: v1.4.2 is live")
		p.waitJS("the recovered line", `document.querySelector("#messages li.status") !== null`)
		// The recovered frame follows the page's registration: this is live.
		ts.sendOK("hana", "after the reconnect")
		p.waitMessages(4)
		want := []string{
			"message after the reconnect #4",
			"status true Reconnected: recovered 2 messages.",
			`replayed Deploy finished: v1.4.2 is live #3`,
			`replayed {"type":"order.shipped","order":1042} #2`,
			"message Deploy started: v1.4.2 #1",
		}
		if got := p.listItems(); !slices.Equal(got, want) {
			t.Errorf("message list:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if count := eval[string](p, `document.getElementById("count").textContent`); count != "(4)" {
			t.Errorf("count = %q, want (4): the recovered line is not a message", count)
		}
		if attempts := eval[string](p, `document.getElementById("state").dataset.attempts`); attempts != "2" {
			t.Errorf("%s connection attempts, want 2 (the first and one reconnect)", attempts)
		}
		wantSockets(t, p, "", offset)
		p.screenshot("recovered.png")
	})

	t.Run("could not recover", func(t *testing.T) {
		// History keeps one message, so of the two sent while the page is
		// away the first is gone.
		ts := startServer(t, testConfig(t, "-history-size", "1"))
		p, pageConn := listenWithCompanion(t, browser, ts, "ivan")
		ts.sendOK("ivan", "before")
		p.waitMessages(1)
		missWhileDown(t, ts, pageConn, "ivan", "lost 1", "lost 2")
		p.waitJS("the recovered line", `document.querySelector("#messages li.status") !== null`)
		ts.sendOK("ivan", "after")
		p.waitMessages(2)
		want := []string{
			"message after #4",
			"status false Reconnected, but could not recover the messages sent meanwhile: some may be missing. An app would reload its data now.",
			"message before #1",
		}
		if got := p.listItems(); !slices.Equal(got, want) {
			t.Errorf("message list:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		p.screenshot("not-recovered.png")
	})

	// Connect again as the same uid (after Disconnect, or with a new token
	// after 1008) asks for what it missed; as another uid it starts over.
	t.Run("Connect resumes the same uid, not another", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		p := openPage(t, browser, consoleURL(ts, ts.token("jo", time.Hour), ""))
		p.waitState("open")
		waitFor(t, "jo registered", func() bool { return len(ts.hub.clients("jo")) == 1 })
		ts.sendOK("jo", "one")
		p.waitMessages(1)
		offset := strings.TrimPrefix(eval[string](p, `document.querySelector("#messages li.message .offset").title`), "offset ")
		reconnect := func(uid string) {
			t.Helper()
			p.do("disconnect", chromedp.Click(chromedp.ID("disconnect")))
			p.waitState("closed")
			p.do("connect as "+uid,
				chromedp.SetValue(chromedp.ID("token"), ts.token(uid, time.Hour)),
				chromedp.Click(chromedp.ID("connect")),
			)
			p.waitState("open")
			waitFor(t, uid+" registered", func() bool { return len(ts.hub.clients(uid)) == 1 })
		}
		reconnect("jo")
		// Nothing was accepted for jo meanwhile: /send answers 404 to a uid
		// without a connection.
		p.waitJS("the recovered line", `document.querySelector("#messages li.status") !== null`)
		reconnect("kim")
		ts.sendOK("kim", "for kim")
		p.waitMessages(2)
		want := []string{
			"message for kim #1",
			"status true Reconnected: recovered 0 messages.",
			"message one #1",
		}
		if got := p.listItems(); !slices.Equal(got, want) {
			t.Errorf("message list:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		wantSockets(t, p, "", offset, "")
	})

	t.Run("reconnects after shutdown", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		addr := ts.Addr()
		p := openPage(t, browser, consoleURL(ts, ts.token("frank", time.Hour), ""))
		p.waitState("open")
		waitFor(t, "frank registered", func() bool { return len(ts.hub.clients("frank")) == 1 })
		ts.sendOK("frank", "before the restart")
		p.waitMessages(1)
		// The page shows each state only until the next, and stop returns
		// after the close, so the page records its states from here on.
		p.do("record states", chromedp.Evaluate[chromedp.Void](`(() => {
			const el = document.getElementById("state");
			window.testStates = [];
			new MutationObserver(() => testStates.push(el.dataset.state + " " + el.dataset.code + " " + el.textContent))
				.observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
		})()`))
		if err := ts.stop(); err != nil {
			t.Fatalf("Serve() = %v, want nil", err)
		}
		p.waitJS("reconnecting after 1001", `testStates.some(s => s.startsWith("reconnecting 1001 "))`)
		// With the server gone, attempts fail (1006) and go on.
		p.waitJS("a failed reconnect", `testStates.some(s => s.startsWith("reconnecting 1006 "))`)
		states := eval[[]string](p, "testStates")
		i := slices.IndexFunc(states, func(s string) bool { return strings.HasPrefix(s, "reconnecting 1001 ") })
		if !strings.Contains(states[i], "closed: 1001 going away") || !strings.Contains(states[i], "Reconnecting in ") {
			t.Errorf("state after shutdown = %q, want the close and the reconnect delay", states[i])
		}

		// A server back on the same address gets the page again. Its
		// history started empty, with a new epoch: the page learns that
		// what was sent meanwhile may be lost.
		ts2 := startServer(t, testConfig(t, "-addr", addr))
		p.waitState("open")
		waitFor(t, "frank registered again", func() bool { return len(ts2.hub.clients("frank")) == 1 })
		p.waitJS("the recovered line", `document.querySelector("#messages li.status") !== null`)
		ts2.sendOK("frank", "after the restart")
		p.waitMessages(2)
		items := p.listItems()
		if len(items) != 3 || items[0] != "message after the restart #1" || !strings.HasPrefix(items[1], "status false Reconnected, but could not recover") {
			t.Errorf("message list = %q, want the message sent after the restart over a could-not-recover line", items)
		}
		if urls := p.socketURLs(); !strings.Contains(urls[len(urls)-1], "&since=") {
			t.Errorf("the page reconnected to %q, want a since", urls[len(urls)-1])
		}
	})
}

// listenWithCompanion opens the console listening as uid and returns it
// with the page's connection on the server. A second connection of uid,
// opened from the test and read until the test ends, keeps uid online
// while the page's connection is down: /send answers 404 to a uid with no
// connection at all and stores nothing, so without it there would be
// nothing to recover.
func listenWithCompanion(t *testing.T, browser context.Context, ts *testServer, uid string) (*page, *Client) {
	t.Helper()
	p := openPage(t, browser, consoleURL(ts, ts.token(uid, time.Hour), ""))
	p.waitState("open")
	waitFor(t, uid+" registered", func() bool { return len(ts.hub.clients(uid)) == 1 })
	pageConn := ts.hub.clients(uid)[0]
	companion := ts.dialStream(uid, "format=json")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, _, err := companion.ReadMessage(); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		companion.Close()
		<-done
	})
	return p, pageConn
}

// missWhileDown drops the page's connection from the server side without
// a close frame, so the page sees 1006 as after a network change, and
// sends msgs to uid before the page is back.
func missWhileDown(t *testing.T, ts *testServer, pageConn *Client, uid string, msgs ...string) {
	t.Helper()
	pageConn.abort()
	waitFor(t, "the page's connection gone", func() bool { return !slices.Contains(ts.hub.clients(uid), pageConn) })
	for _, m := range msgs {
		ts.sendOK(uid, m)
	}
	// The page waits at least 250 ms before it reconnects, and the sends
	// take milliseconds; if it was back already, the test proves nothing.
	if n := len(ts.hub.clients(uid)); n != 1 {
		t.Fatalf("%s has %d connections after the sends, want only the test's: the page came back too soon", uid, n)
	}
}

// wantSockets checks the page's WebSocket URLs: each with format=json and
// the since given ("" for none).
func wantSockets(t *testing.T, p *page, since ...string) {
	t.Helper()
	urls := p.socketURLs()
	if len(urls) != len(since) {
		t.Fatalf("the page opened %d WebSockets, want %d: %q", len(urls), len(since), urls)
	}
	for i, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		if q.Get("format") != "json" || q.Get("since") != since[i] || q.Has("since") != (since[i] != "") {
			t.Errorf("WebSocket %d: format %q since %q, want json and %q", i+1, q.Get("format"), q.Get("since"), since[i])
		}
	}
}
