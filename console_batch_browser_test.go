package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// batchRow is one line of the batch result list under the send panel.
type batchRow struct {
	class, status, line, title, result string
}

// batchRows returns the batch result list, in order.
func (p *page) batchRows() []batchRow {
	p.t.Helper()
	raw := eval[[][]string](p, `[...document.querySelectorAll("#batch-results li")].map(li => [
		li.className, li.dataset.status, li.querySelector(".line").textContent,
		li.querySelector(".line").title, li.querySelector(".result").textContent])`)
	rows := make([]batchRow, len(raw))
	for i, r := range raw {
		if len(r) != 5 {
			p.t.Fatalf("batch result %d = %q, want 5 fields", i, r)
		}
		rows[i] = batchRow{r[0], r[1], r[2], r[3], r[4]}
	}
	return rows
}

// sendBatch ticks Batch if it is not, fills the uid and message box and
// presses Send, then waits for the answer's status.
func (p *page) sendBatch(uid, text, status string) {
	p.t.Helper()
	p.do("send a batch",
		chromedp.Evaluate[chromedp.Void](`(() => { const b = document.getElementById("batch"); if (!b.checked) b.click(); })()`),
		chromedp.SetValue(chromedp.ID("uid"), uid),
		chromedp.SetValue(chromedp.ID("message"), text),
		chromedp.Click(chromedp.ID("send")),
	)
	p.waitJS("/send/batch answer "+status, `document.getElementById("send-result").dataset.status === "`+status+`"`)
}

// sendResult is the text the send panel shows for the whole request.
func (p *page) sendResult() string {
	p.t.Helper()
	return eval[string](p, `document.getElementById("send-result").textContent`)
}

// TestConsoleBatchInBrowser drives the send panel's batch mode in headless
// Chromium against real servers: one message a line, one POST
// /send/batch, one result a line.
func TestConsoleBatchInBrowser(t *testing.T) {
	browser := newBrowser(t)

	t.Run("sends each line in order and lists the ids", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		p := openPage(t, browser, consoleURL(ts, ts.token("lena", time.Hour), testAPIKey))
		p.waitState("open")
		waitFor(t, "lena registered", func() bool { return len(ts.hub.clients("lena")) == 1 })
		held := ts.dialStream("lena", "format=json")
		defer held.Close()

		long := "third: " + strings.Repeat("0123456789", 8) // 87 characters
		p.do("tick Batch", chromedp.Click(chromedp.ID("batch")))
		labels := eval[[]string](p, `[document.querySelector('label[for="message"]').textContent, document.getElementById("send").textContent]`)
		if want := []string{"Messages, one per line", "Send batch"}; !slices.Equal(labels, want) {
			t.Errorf("message label and button = %q, want %q", labels, want)
		}
		// Blank lines are skipped; markup stays text.
		p.sendBatch("lena", "first\n\n   \n<b>second</b>\n"+long+"\n", "200")
		lines := []string{"first", "<b>second</b>", long}

		// (a) The three messages arrive in line order, on the test's
		// connection and on the page's list.
		var ids []string
		for _, want := range lines {
			f := readFrame(t, held)
			if f.Message != want {
				t.Fatalf("held connection got %q, want %q", f.Message, want)
			}
			ids = append(ids, f.ID)
		}
		p.waitMessages(len(lines))
		got := p.messages()
		slices.Reverse(got) // the page shows the newest first
		if !slices.Equal(got, lines) {
			t.Errorf("page messages, oldest first = %q, want %q", got, lines)
		}

		// (b) One result a line, in order, with the id of its message.
		p.waitJS("3 batch results", `document.querySelectorAll("#batch-results li").length === 3`)
		want := []batchRow{
			{"ok", "200", "first", "first", "id " + ids[0]},
			{"ok", "200", "<b>second</b>", "<b>second</b>", "id " + ids[1]},
			{"ok", "200", "third: " + strings.Repeat("0123456789", 5) + "01…", long, "id " + ids[2]},
		}
		if rows := p.batchRows(); !slices.Equal(rows, want) {
			t.Errorf("batch results:\n%q\nwant:\n%q", rows, want)
		}
		if out, want := p.sendResult(), "200 OK\n3 lines: 3 sent, 0 not sent."; out != want {
			t.Errorf("send result = %q, want %q", out, want)
		}
		if n := eval[int](p, `document.querySelectorAll("#batch-results b, #messages b").length`); n != 0 {
			t.Errorf("%d elements made from message text, want 0", n)
		}
		p.screenshot("batch.png")
	})

	t.Run("a uid that is not connected", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		p := openPage(t, browser, consoleURL(ts, "", testAPIKey))
		p.sendBatch("nobody", "one\ntwo", "200")
		want := []batchRow{
			{"error", "404", "one", "one", "404 client not found: nobody"},
			{"error", "404", "two", "two", "404 client not found: nobody"},
		}
		if rows := p.batchRows(); !slices.Equal(rows, want) {
			t.Errorf("batch results:\n%q\nwant:\n%q", rows, want)
		}
		if out, want := p.sendResult(), "200 OK\n2 lines: 0 sent, 2 not sent."; out != want {
			t.Errorf("send result = %q, want %q", out, want)
		}
	})

	t.Run("a bad line refuses the batch", func(t *testing.T) {
		ts := startServer(t, testConfig(t, "-max-message-size", "8"))
		p := openPage(t, browser, consoleURL(ts, ts.token("milo", time.Hour), testAPIKey))
		p.waitState("open")
		waitFor(t, "milo registered", func() bool { return len(ts.hub.clients("milo")) == 1 })
		p.sendBatch("milo", "before", "200")
		p.waitMessages(1)
		if rows := p.batchRows(); len(rows) != 1 || rows[0].status != "200" {
			t.Fatalf("batch results = %q, want one sent", rows)
		}

		// The refusal replaces the previous results with its one reason.
		p.sendBatch("milo", "ok\nthis line is too long\nok too", "413")
		out := p.sendResult()
		if want := "413 Request Entity Too Large\nmessages[1]: message too large: 21 bytes, at most 8"; out != want {
			t.Errorf("send result = %q, want %q", out, want)
		}
		if rows := p.batchRows(); len(rows) != 0 {
			t.Errorf("batch results after a refusal = %q, want none", rows)
		}
		if cls := eval[string](p, `document.getElementById("send-result").className`); cls != "error" {
			t.Errorf("send result class = %q, want error", cls)
		}
		// Nothing of the refused batch was sent: had its "ok" lines gone
		// out, they would come before a message sent after the answer.
		ts.sendOK("milo", "after")
		p.waitMessages(2)
		if got := p.messages(); !slices.Equal(got, []string{"after", "before"}) {
			t.Errorf("messages = %q, want only those sent outside the refused batch", got)
		}

		// Only blank lines: nothing is posted.
		p.do("send blank lines", chromedp.SetValue(chromedp.ID("message"), "\n  \n"), chromedp.Click(chromedp.ID("send")))
		p.waitJS("the blank batch refused", `document.getElementById("send-result").textContent.startsWith("Nothing to send")`)
		if n := eval[int](p, `performance.getEntriesByType("resource").filter(e => e.name.endsWith("/send/batch")).length`); n != 2 {
			t.Errorf("%d requests to /send/batch, want 2: blank lines are not posted", n)
		}
	})
}
