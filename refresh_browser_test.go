package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
)

// TestClientRefreshesInBrowser: the client library (clients/js, served
// as /pusher.js), in Chromium, keeps one connection open across two token
// expiries: its getToken hands out tokens that last 3 s, then 6 s, then a
// minute, and it refreshes each in band before its exp.
func TestClientRefreshesInBrowser(t *testing.T) {
	browser := newBrowser(t)
	ts := startServer(t, testConfig(t))
	p := openPage(t, browser, consoleURL(ts, "", ""))
	start := time.Now().Truncate(time.Second).Add(time.Second)
	tok := func(exp time.Time) string {
		return signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"uid": "lena", "exp": exp.Unix()})
	}
	first, second := start.Add(3*time.Second), start.Add(6*time.Second)
	tokens := []string{tok(first), tok(second), tok(start.Add(time.Minute))}
	p.do("connect with the client library", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`
		import("/pusher.js").then(({ connectPusher }) => {
			window.tokens = [%q, %q, %q]; window.got = []; window.states = []; window.asked = 0;
			window.client = connectPusher({
				url: "ws://%s/ws",
				getToken: () => { window.asked++; return Promise.resolve(window.tokens.shift()); },
				onMessage: (text) => window.got.push(text),
				onState: (s) => window.states.push(s.state + (s.code ? ":" + s.code : "")),
			});
		})`, tokens[0], tokens[1], tokens[2], ts.Addr()), chromedp.EvalAwaitPromise))
	waitFor(t, "lena registered", func() bool { return len(ts.hub.clients("lena")) == 1 })
	// Past both expiries: the point of the test, so a wait for a moment,
	// not for a state.
	time.Sleep(time.Until(second.Add(700 * time.Millisecond)))
	ts.sendOK("lena", "after two expiries")
	// window.got is not in the DOM, so not waitJS (which checks on DOM
	// changes).
	waitFor(t, "the message in the page", func() bool { return eval[bool](p, `window.got.includes("after two expiries")`) })
	if states := eval[[]string](p, "window.states"); strings.Join(states, ",") != "connecting,open" {
		t.Errorf("states %v, want one connection that stayed open", states)
	}
	if asked := eval[int](p, "window.asked"); asked != 3 {
		t.Errorf("getToken asked %d times, want 3 (connect and two refreshes)", asked)
	}
	if n := len(ts.hub.clients("lena")); n != 1 {
		t.Errorf("%d connections of lena, want the first one still", n)
	}
	p.do("stop", chromedp.Evaluate[chromedp.Void](`window.client.stop()`))
	if states := eval[[]string](p, "window.states"); strings.Join(states, ",") != "connecting,open,closed:1000" {
		t.Errorf("states after stop %v, want closed:1000 last", states)
	}
}
