package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// Report is the outcome of one run. Rates are per wall-clock second;
// "per CPU-second" divides by the server's user+system CPU time over the
// same phase. Zero figures are left out of the text and the JSON.
type Report struct {
	Scenario      string  `json:"scenario"`
	Label         string  `json:"label,omitempty"`
	Target        string  `json:"target,omitempty"` // -target; "" in reports of go-pusher from before the flag
	Users         int     `json:"users"`
	ConnsPerUser  int     `json:"conns_per_user"`
	Senders       int     `json:"senders,omitempty"`
	MulticastSize int     `json:"multicast_size,omitempty"`
	Size          int     `json:"size,omitempty"`
	Elapsed       float64 `json:"elapsed_seconds"`
	CPUs          int     `json:"cpus"`
	LoadAvg       float64 `json:"load_average"` // 1-minute, at the start: other work on the machine skews the rates

	// Connections.
	Connected       int            `json:"connected"`
	DialErrors      map[string]int `json:"dial_errors,omitempty"`
	UpgradesPerSec  float64        `json:"upgrades_per_sec,omitempty"`
	ConfirmedPerSec float64        `json:"confirmed_per_sec,omitempty"` // until the connections gauge counted them all
	Redials         int            `json:"redials,omitempty"`
	ServerCloses    map[string]int `json:"server_closes,omitempty"` // by close code, or error without one

	// The server's cost.
	RSSPerConn        float64 `json:"rss_per_conn_bytes,omitempty"`
	HeapPerConn       float64 `json:"heap_per_conn_bytes,omitempty"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn,omitempty"`
	ServerCPU         float64 `json:"server_cpu_seconds,omitempty"`
	ServerSent        float64 `json:"server_sent,omitempty"`           // pusher_messages_sent_total over the run
	ServerFailed      float64 `json:"server_failed,omitempty"`         // pusher_messages_failed_total over the run
	SlowConsumers     float64 `json:"server_slow_consumers,omitempty"` // pusher_slow_consumers_total over the run
	ToolCPU           float64 `json:"tool_cpu_seconds,omitempty"`
	OtherCPU          float64 `json:"other_cpu_seconds,omitempty"` // the rest of the machine, over the same phase

	// Messages.
	Requests           int            `json:"requests,omitempty"`
	Accepted           int            `json:"accepted,omitempty"`
	Status             map[string]int `json:"status,omitempty"`      // answers that were not 2xx
	SendErrors         map[string]int `json:"send_errors,omitempty"` // no answer
	AcceptedPerSec     float64        `json:"accepted_per_sec,omitempty"`
	Delivered          int            `json:"delivered,omitempty"` // first receipts on every connection
	DeliveredPerSec    float64        `json:"delivered_per_sec,omitempty"`
	DeliveredPerCPUSec float64        `json:"delivered_per_cpu_sec,omitempty"`
	Expected           int            `json:"expected,omitempty"` // receipts owed to connections open across their /send
	Lost               int            `json:"lost"`
	Duplicates         int            `json:"duplicates"`
	OutOfOrder         int            `json:"out_of_order"`
	Unexpected         int            `json:"unexpected"` // received with no 2xx /send for that uid
	Malformed          int            `json:"malformed"`
	NotFoundWhileOpen  int            `json:"not_found_while_open,omitempty"` // 404 for a uid with a connection open across the request
	MalformedSample    string         `json:"malformed_sample,omitempty"`
	Latency            *Latency       `json:"latency_ms,omitempty"`

	// Reconnect: the tool's drops, the redials with since= and what they
	// got back.
	Drops            int      `json:"drops,omitempty"`
	Reconnects       int      `json:"reconnects,omitempty"` // connections dialled with ?since=
	RecoveredTrue    int      `json:"recovered_true,omitempty"`
	RecoveredFalse   int      `json:"recovered_false,omitempty"`
	Replayed         int      `json:"replayed,omitempty"`           // messages that came before {"recovered": true}
	Unrecoverable    int      `json:"unrecoverable,omitempty"`      // missing, given up by a {"recovered": false}
	Gaps             int      `json:"gaps,omitempty"`               // offsets skipped without {"recovered": false}
	GapSamples       []string `json:"gap_samples,omitempty"`        // the first few of them
	DuplicateSamples []string `json:"duplicate_samples,omitempty"`  // the first few duplicates: where each copy came
	MissingRecovered int      `json:"missing_recovered,omitempty"`  // connections with since= that never got {"recovered"}
	ExpectedNotFound int      `json:"expected_not_found,omitempty"` // 404 while no connection of the uid was surely registered
	ReplayLatency    *Latency `json:"replay_latency_ms,omitempty"`  // from the redial's start to {"recovered"}

	// Batch and retry: Requests, Accepted, Status and SendErrors count
	// messages (a batch's items, retry's keys), each by its own answer;
	// these count the POSTs and what they met.
	BatchItems      int    `json:"batch_items,omitempty"`       // unicasts per /send/batch
	Posts           int    `json:"posts,omitempty"`             // HTTP requests, every try and repeat included
	BadAnswers      int    `json:"bad_answers,omitempty"`       // 2xx answers whose body was not the contract's
	BadAnswerSample string `json:"bad_answer_sample,omitempty"` // the first of them
	FirstError      string `json:"first_error,omitempty"`       // the first message answered other than 200: status and reason

	// Retry: what the tries met. A retry is a POST of keys tried before.
	KeyPrefix         string `json:"key_prefix,omitempty"`          // keys are <prefix>-<sender>-<seq>
	Retries           int    `json:"retries,omitempty"`             // POSTs that tried keys again
	Timeouts          int    `json:"timeouts,omitempty"`            // tries (and repeats) without an answer: timed out, or the connection failed
	Abandoned         int    `json:"abandoned,omitempty"`           // first tries the tool hung up on once written (-retry-abandon)
	Conflicts         int    `json:"conflicts,omitempty"`           // 409 answers: the key's first request still in flight
	ReplayedAcks      int    `json:"replayed_acks,omitempty"`       // 200s marked replayed: an earlier try had gone through
	Repeats           int    `json:"repeats,omitempty"`             // requests sent once more after their 200 (-retry-repeat)
	WrongReplays      int    `json:"wrong_replays,omitempty"`       // repeated keys not answered 200, replayed, with the first id
	WrongReplaySample string `json:"wrong_replay_sample,omitempty"` // the first of them
	GaveUp            int    `json:"gave_up,omitempty"`             // keys with no final answer after -retry-attempts tries

	// The server before and after (idle, churn, reconnect).
	Before *serverState `json:"before,omitempty"`
	After  *serverState `json:"after,omitempty"`

	// Problems lists what failed; Result is PASS when it is empty.
	Problems []string `json:"problems,omitempty"`
	Result   string   `json:"result"`
}

// check derives Problems and Result from the figures.
func (r *Report) check() {
	add := func(n int, what string) {
		if n > 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.Lost, "lost")
	add(r.Duplicates, "duplicates")
	add(r.OutOfOrder, "out of order")
	add(r.Unexpected, "unexpected")
	add(r.Malformed, "malformed")
	add(r.NotFoundWhileOpen, "answered 404 while the uid had a connection open")
	add(r.Gaps, "offsets skipped (gaps) without {\"recovered\": false}")
	add(r.MissingRecovered, "connections with since= that never got {\"recovered\"}")
	if r.Scenario == scenarioBatch || r.Scenario == scenarioRetry {
		// Every uid is held: each message must be sent.
		add(sum(r.Status), "messages answered other than 200 (see non-2xx)")
	}
	add(r.BadAnswers, "answers the tool could not read")
	add(r.WrongReplays, "repeated keys not answered as a replay of their first answer")
	add(r.GaveUp, "keys never answered 200 within -retry-attempts tries")
	// The tool closes every connection itself: any other end is news.
	add(sum(r.ServerCloses), "connections closed by the server or the network")
	add(sum(r.DialErrors), "handshakes failed")
	r.Result = "PASS"
	if len(r.Problems) > 0 {
		r.Result = "FAIL"
	}
}

func (r *Report) problem(format string, a ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
	r.Result = "FAIL"
}

func (r *Report) print(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	// tabwriter keeps these lines (each has cells) until Flush, whose
	// error is returned below.
	line := func(key, format string, a ...any) {
		_, _ = fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{key}, a...)...)
	}
	name := r.Scenario
	if r.Label != "" {
		name += " (" + r.Label + ")"
	}
	line("scenario", "%s", name)
	if r.Target != "" {
		line("target", "%s", r.Target)
	}
	line("connections", "%d of %d (%d users × %d)", r.Connected, r.Users*r.ConnsPerUser, r.Users, r.ConnsPerUser)
	if r.Senders > 0 {
		line("senders", "%d, message size %d B", r.Senders, r.Size)
	}
	if r.MulticastSize > 0 {
		line("uids per multicast", "%d", r.MulticastSize)
	}
	line("elapsed", "%.2f s (%d CPUs, load average %.2f at the start)", r.Elapsed, r.CPUs, r.LoadAvg)
	switch {
	case r.ConfirmedPerSec > 0:
		line("connect rate", "%.0f upgrades/s, %.0f/s until the server counted them all", r.UpgradesPerSec, r.ConfirmedPerSec)
	case r.UpgradesPerSec > 0:
		line("connect rate", "%.0f upgrades/s", r.UpgradesPerSec)
	}
	counts(line, "dial errors", r.DialErrors)
	if r.Redials > 0 {
		line("redials", "%d", r.Redials)
	}
	counts(line, "closed by server", r.ServerCloses)
	if r.RSSPerConn != 0 {
		line("server RSS / conn", "%s", bytesOf(r.RSSPerConn))
		line("server heap / conn", "%s", bytesOf(r.HeapPerConn))
		line("goroutines / conn", "%.2f", r.GoroutinesPerConn)
	}
	if r.Requests > 0 {
		if r.Posts > 0 {
			line("messages", "%d, accepted %d (%.0f/s), in %d POSTs%s", r.Requests, r.Accepted, r.AcceptedPerSec, r.Posts, batchOf(r.BatchItems))
		} else {
			line("requests", "%d, accepted %d (%.0f/s)", r.Requests, r.Accepted, r.AcceptedPerSec)
		}
		counts(line, "non-2xx", r.Status)
		counts(line, "send errors", r.SendErrors)
		line("delivered", "%d (%.0f/s)", r.Delivered, r.DeliveredPerSec)
		if r.DeliveredPerCPUSec > 0 {
			line("per server CPU-s", "%.0f delivered", r.DeliveredPerCPUSec)
		}
		line("checked", "expected %d, lost %d, duplicates %d, out of order %d, unexpected %d, malformed %d",
			r.Expected, r.Lost, r.Duplicates, r.OutOfOrder, r.Unexpected, r.Malformed)
	}
	if r.Scenario == scenarioReconnect {
		line("drops", "%d, reconnects with since= %d: recovered true %d, false %d (%d messages given up)",
			r.Drops, r.Reconnects, r.RecoveredTrue, r.RecoveredFalse, r.Unrecoverable)
		line("replayed", "%d messages; gaps %d, no recovered frame %d, expected 404s %d",
			r.Replayed, r.Gaps, r.MissingRecovered, r.ExpectedNotFound)
		for _, g := range r.GapSamples {
			line("gap", "%s", g)
		}
		for _, d := range r.DuplicateSamples {
			line("duplicate", "%s", d)
		}
		if l := r.ReplayLatency; l != nil {
			line("replay latency ms", "p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  mean %.2f (redial to {\"recovered\"})", l.P50, l.P90, l.P99, l.Max, l.Mean)
		}
	}
	r.printPosts(line)
	if r.MalformedSample != "" {
		line("first malformed", "%q", r.MalformedSample)
	}
	if l := r.Latency; l != nil {
		key := "latency ms"
		if r.Scenario == scenarioReconnect {
			key = "live latency ms"
		}
		line(key, "p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  mean %.2f", l.P50, l.P90, l.P99, l.Max, l.Mean)
	}
	if r.ServerSent+r.ServerFailed+r.SlowConsumers > 0 {
		line("server counted", "sent %.0f, failed %.0f, slow consumers %.0f", r.ServerSent, r.ServerFailed, r.SlowConsumers)
	}
	if r.ServerCPU > 0 || r.ToolCPU > 0 {
		line("CPU s", "server %.2f, this tool %.2f, other processes %.2f", r.ServerCPU, r.ToolCPU, r.OtherCPU)
	}
	for _, s := range []struct {
		name string
		st   *serverState
	}{{"server before", r.Before}, {"server after", r.After}} {
		if st := s.st; st != nil {
			line(s.name, "connections %.0f, users %.0f, pending %.0f, goroutines %.0f, RSS %s, heap %s",
				st.Connections, st.Users, st.Pending, st.Goroutines, bytesOf(float64(st.RSS)), bytesOf(st.HeapInuse))
		}
	}
	for _, p := range r.Problems {
		line("problem", "%s", p)
	}
	line("result", "%s", r.Result)
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// printPosts writes the figures of batch and retry.
func (r *Report) printPosts(line func(key, format string, a ...any)) {
	if r.Scenario == scenarioRetry {
		line("retries", "%d POSTs: timeouts %d, abandoned %d, 409 %d; 200s replayed %d; gave up %d",
			r.Retries, r.Timeouts, r.Abandoned, r.Conflicts, r.ReplayedAcks, r.GaveUp)
		line("repeats", "%d, wrong replays %d (keys %s-<sender>-<seq>)", r.Repeats, r.WrongReplays, r.KeyPrefix)
	}
	if r.FirstError != "" {
		line("first error", "%q", r.FirstError)
	}
	if r.BadAnswers > 0 {
		line("unreadable answers", "%d, first %s", r.BadAnswers, r.BadAnswerSample)
	}
	if r.WrongReplaySample != "" {
		line("wrong replay", "%s", r.WrongReplaySample)
	}
}

func batchOf(items int) string {
	if items == 0 {
		return ""
	}
	return fmt.Sprintf(" of up to %d items", items)
}

func counts(line func(key, format string, a ...any), key string, m map[string]int) {
	if len(m) == 0 {
		return
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	line(key, "%s", strings.Join(parts, ", "))
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func bytesOf(b float64) string {
	switch {
	case b >= 1<<30 || b <= -1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20 || b <= -1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10 || b <= -1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

// runTable is "pusher-bench table FILE...": each file holds one or more
// -json reports; it prints them as one table, a row each.
func runTable(files []string, w io.Writer) error {
	if len(files) == 0 {
		return errors.New("table: give the -json report files")
	}
	var reps []*Report
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("table: %w", err)
		}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		for dec.More() {
			var r Report
			if err := dec.Decode(&r); err != nil {
				return fmt.Errorf("table: %s: %w", f, err)
			}
			reps = append(reps, &r)
		}
	}
	return writeTable(w, reps)
}

func writeTable(w io.Writer, reps []*Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// tabwriter keeps these lines (each has cells) until Flush, whose
	// error is returned below.
	_, _ = fmt.Fprintln(tw, "run\tconns\tconn/s\tRSS/conn\tgor/conn\taccepted/s\tdelivered/s\tdeliv/CPU-s\tp50 ms\tp99 ms\tmax ms\tlost\tdup\tooo\treconn\treplay p99\tother CPU\tresult\t")
	num := func(v float64, format string) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf(format, v)
	}
	for _, r := range reps {
		name := r.Scenario
		if r.Target == targetCentrifugo {
			name += " " + r.Target
		}
		if r.Label != "" {
			name += " " + r.Label
		}
		var p50, p99, pmax float64
		if r.Latency != nil {
			p50, p99, pmax = r.Latency.P50, r.Latency.P99, r.Latency.Max
		}
		rss := "-"
		if r.RSSPerConn != 0 {
			rss = bytesOf(r.RSSPerConn)
		}
		var replay99 float64
		if r.ReplayLatency != nil {
			replay99 = r.ReplayLatency.P99
		}
		_, _ = fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", name, r.Connected,
			num(r.UpgradesPerSec, "%.0f"), rss, num(r.GoroutinesPerConn, "%.2f"),
			num(r.AcceptedPerSec, "%.0f"), num(r.DeliveredPerSec, "%.0f"), num(r.DeliveredPerCPUSec, "%.0f"),
			num(p50, "%.2f"), num(p99, "%.2f"), num(pmax, "%.1f"), r.Lost, r.Duplicates, r.OutOfOrder,
			num(float64(r.Reconnects), "%.0f"), num(replay99, "%.2f"), num(r.OtherCPU, "%.1f s"), r.Result)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	for _, r := range reps {
		for _, p := range r.Problems {
			fmt.Fprintf(w, "%s %s: %s\n", r.Scenario, r.Label, p) //nolint:errcheck // should fail the table like Flush above does; returning it changes behaviour, left out of the lint pass
		}
	}
	return nil
}
