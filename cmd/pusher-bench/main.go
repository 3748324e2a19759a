// Command pusher-bench is the load tool of go-pusher: it opens WebSocket
// connections with tokens it signs itself, pushes messages through /send
// or /send/batch (with idempotency keys and retries in retry), checks
// that every receiver gets each of its messages exactly once and in
// order, and reports rates, latencies and the server's memory and CPU
// cost.
//
// Usage:
//
//	JWT_SECRET=... PUSHER_API_KEY=... pusher-bench -url http://127.0.0.1:8181 \
//	    -server-pid $(pidof go-pusher) -scenario send -users 1000 -senders 32 -messages 100000
//	pusher-bench table run1.json run2.json   # one table row per -json report
//
// Scenarios: idle, send, batch, multicast, churn, reconnect, retry (see
// Engine). With -target centrifugo, idle and send run against Centrifugo
// instead (centrifugo.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errCheckFailed):
		// The report says what failed; the exit code tells scripts.
		os.Exit(2)
	default:
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, "pusher-bench: "+line)
		}
		os.Exit(1)
	}
}

// usageHead is what -h prints before the flags.
const usageHead = `Usage: pusher-bench [flags]            run a scenario against a server
       pusher-bench table FILE.json...  print -json reports as one table

JWT_SECRET and PUSHER_API_KEY come from the environment, as the server's
(-target centrifugo: client.token.hmac_secret_key and http_api.key).

Flags:
`

// run is the whole program: main only adds the process around it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "table" {
		return runTable(args[1:], stdout)
	}
	e, cpuProfile, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	e.Out = stdout
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close() //nolint:errcheck // a close error (a truncated profile) should fail the run; returning it changes behaviour, left out of the lint pass
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	limit, err := raiseFileLimit()
	if err != nil {
		return err
	}
	// Each connection is one descriptor; senders, the metrics probe and the
	// runtime need a few more.
	if need := uint64(e.Users*e.ConnsPerUser + e.Senders + 64); need > limit {
		return fmt.Errorf("-users %d × -conns-per-user %d needs about %d open files, the limit is %d: raise the hard limit (ulimit -Hn)",
			e.Users, e.ConnsPerUser, need, limit)
	}
	return e.Run(ctx)
}

// parseFlags builds an Engine from the command line and the environment.
// Secrets come from the environment only: flags show in ps.
// It also returns -cpuprofile, the file for the tool's own CPU profile.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*Engine, string, error) {
	e := &Engine{}
	var cpuProfile string
	fs := flag.NewFlagSet("pusher-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	urls := &listFlag{value: "http://127.0.0.1:8181"}
	internal, pids := &listFlag{}, &listFlag{}
	fs.Var(urls, "url", "server base URL: /ws is dialled there; several nodes of a cluster: repeat the flag or separate with commas")
	fs.Var(internal, "internal-url", "base URL of /send and /metrics (default: -url); with several nodes, one per node")
	fs.Var(pids, "server-pid", "server process id: RSS and CPU from /proc/PID (none: from the server's process_* metrics); several nodes: one per node, repeated or comma-separated")
	fs.StringVar(&e.Target, "target", targetGoPusher, "the server: go-pusher, or centrifugo (Centrifugo v6's JSON protocol and HTTP API; idle and send only; see docs/centrifugo-bench.md)")
	fs.StringVar(&e.CentrifugoNamespace, "centrifugo-namespace", "personal", "centrifugo: the namespace of the users' personal channels, <namespace>:#<uid> (Centrifugo's personal_channel_namespace; \"\": #<uid>)")
	fs.StringVar(&e.Scenario, "scenario", "send", "idle, send, batch, multicast, churn, reconnect or retry")
	fs.StringVar(&e.Label, "label", "", "a name for this run in the report (e.g. message-log=none)")
	fs.IntVar(&e.Users, "users", 100, "distinct uids, each with -conns-per-user connections")
	fs.IntVar(&e.ConnsPerUser, "conns-per-user", 1, "connections per uid")
	fs.IntVar(&e.Senders, "senders", 8, "concurrent /send clients, each on its own keep-alive connection")
	fs.IntVar(&e.Messages, "messages", 10000, "send, batch, retry: messages in total; churn: at most this many")
	fs.IntVar(&e.MulticastSize, "multicast", 0, "multicast: uids per /send (0: all -users)")
	fs.IntVar(&e.Rounds, "rounds", 100, "multicast: /send requests in total")
	fs.IntVar(&e.Size, "size", 64, "message size in bytes: s<sender>:<seq>:<unixnano>: padded with x (never cut)")
	fs.Float64Var(&e.Rate, "rate", 0, "at most this many requests per second in total (batch: /send/batch requests; retry: requests with their retries) (0: as fast as the server answers)")
	fs.BoolVar(&e.Form, "form", false, "send, churn, reconnect: send unicasts as form bodies (uid, message) instead of JSON")
	fs.IntVar(&e.BatchItems, "batch-items", 100, "batch: unicasts per POST /send/batch; retry: when given and above 1, keyed items of /send/batch (at most -users) instead of keyed /send (retry's default: 1)")
	fs.DurationVar(&e.RetryTimeout, "retry-timeout", 2*time.Millisecond, "retry: a try with no answer within this is tried again with the same keys; doubled at each retry, up to -timeout (short, so that tries time out under load)")
	fs.Float64Var(&e.RetryAbandon, "retry-abandon", 0.05, "retry: share of first tries the tool hangs up on once written, so that retries happen however fast the server")
	fs.Float64Var(&e.RetryRepeat, "retry-repeat", 0.05, "retry: share of requests sent once more after their 200, which must come back replayed with the first id")
	fs.IntVar(&e.RetryAttempts, "retry-attempts", 10, "retry: most tries of one message before it counts as never acknowledged")
	fs.DurationVar(&e.Duration, "duration", 10*time.Second, "churn, reconnect: how long connections close (drop) and redial while sends go on")
	fs.DurationVar(&e.Settle, "settle", 3*time.Second, "idle: how long connections are held before the server is measured; churn: pause before the leak check")
	fs.DurationVar(&e.Drain, "drain", 10*time.Second, "longest wait for accepted messages to arrive after the last /send")
	fs.DurationVar(&e.ConnectTimeout, "connect-timeout", 2*time.Minute, "longest time to open every connection and see the server count them")
	fs.DurationVar(&e.SettleTimeout, "settle-timeout", 30*time.Second, "idle, churn: longest wait for the server's gauges to return to their baseline once every connection closed")
	fs.DurationVar(&e.RequestTimeout, "timeout", 10*time.Second, "one /send request or WebSocket handshake")
	fs.DurationVar(&e.MaxTime, "max-time", 15*time.Minute, "the whole run ends by then, whatever happens")
	fs.IntVar(&e.DialConcurrency, "dial-concurrency", 64, "handshakes in flight at once while connecting")
	fs.IntVar(&e.SourceAddrs, "source-addrs", 16, "spread connections over source addresses 127.0.0.1..N when the server is on loopback (0: the kernel's choice)")
	fs.Float64Var(&e.ChurnFraction, "churn-fraction", 0.5, "churn: share of connections that close and redial (the rest stay, to check delivery)")
	fs.DurationVar(&e.ChurnLifetime, "churn-lifetime", time.Second, "churn: mean lifetime of a churning connection")
	fs.Float64Var(&e.ChurnAbrupt, "churn-abrupt", 0.3, "churn: share of closes that drop the TCP connection without a close frame")
	fs.DurationVar(&e.RegisterGrace, "register-grace", 100*time.Millisecond, "a connection counts for a /send issued at least this long after its handshake (the server registers after the upgrade)")
	fs.IntVar(&e.GoroutineSlack, "goroutine-slack", 3, "churn: goroutines above the baseline still counted as back to it")
	fs.DurationVar(&e.DropInterval, "drop-interval", 10*time.Second, "reconnect: mean time a connection lives before it drops (exponential: drops at random moments)")
	fs.DurationVar(&e.DropStall, "drop-stall", 100*time.Millisecond, "reconnect: a dropping connection first stops reading for up to this long (random), so that messages are in flight")
	fs.DurationVar(&e.RedialMin, "redial-min", 50*time.Millisecond, "reconnect: shortest delay between a drop and the redial with ?since=")
	fs.DurationVar(&e.RedialMax, "redial-max", 500*time.Millisecond, "reconnect: longest delay between a drop and the redial (uniform between the two)")
	fs.StringVar(&e.UIDPrefix, "uid-prefix", "bench-", "uids are this prefix and a number")
	fs.StringVar(&cpuProfile, "cpuprofile", "", "write the tool's own CPU profile to this file (is the tool the limit?)")
	fs.BoolVar(&e.JSON, "json", false, "print the report as JSON (for pusher-bench table)")
	fs.Usage = func() {
		// Like flag's PrintDefaults below, usage text has nowhere to
		// report a failed write to stderr.
		_, _ = io.WriteString(stderr, usageHead)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, "", err
	}
	if fs.NArg() > 0 {
		return nil, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if e.Scenario == scenarioRetry && !given(fs, "batch-items") {
		e.BatchItems = 1 // retry posts keyed /send unless told to batch
	}
	e.URL, e.InternalURL = urls.value, internal.value
	for _, v := range splitList(pids.value) {
		pid, err := strconv.Atoi(v)
		if err != nil {
			return nil, "", fmt.Errorf("invalid -server-pid %q: want process ids", v)
		}
		e.ServerPIDs = append(e.ServerPIDs, pid)
	}
	e.JWTSecret = getenv("JWT_SECRET")
	e.APIKey = getenv("PUSHER_API_KEY")
	if err := e.validate(); err != nil {
		return nil, "", err
	}
	return e, cpuProfile, nil
}

// given reports whether the command line set the flag name.
func given(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// listFlag is a flag that may be repeated and holds comma-separated
// values: its value is every one given, joined with commas. The default
// goes at the first Set.
type listFlag struct {
	value string
	set   bool
}

func (l *listFlag) String() string { return l.value }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.value, l.set = "", true
	}
	if l.value != "" {
		l.value += ","
	}
	l.value += v
	return nil
}

// raiseFileLimit raises the soft limit of open files to the hard limit
// and returns it. The Go runtime does so at start already (since 1.19);
// doing it here keeps the tool right whatever runtime runs it, and gives
// the figure for the check above.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}
