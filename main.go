// Command go-pusher is a WebSocket push server: browsers connect to /ws
// with a JWT, backend apps POST to /send to push a message to a user's
// open connections.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	// Trusted roots compiled in, used only where the system has none: the
	// container image is empty, and a JWKS, a webhook receiver or a
	// rediss:// server must still verify.
	_ "golang.org/x/crypto/x509roots/fallback"
)

// version is set at link time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, "go-pusher: "+line)
		}
		os.Exit(1)
	}
}

// run is the whole program: main only adds the process around it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "token":
			return runToken(args[1:], getenv, stdout)
		case "healthcheck":
			return runHealthcheck(ctx, args[1:], getenv, stdout)
		}
	}
	cfg, err := parseConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.ShowVersion {
		fmt.Fprintln(stdout, "go-pusher", version) //nolint:errcheck // a failed write should exit 1; returning it changes behaviour, left out of the lint pass
		return nil
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel, stderr)
	if cfg.RedisURL != "" {
		// go-redis logs through one logger per process; run is the
		// program, so it is ours to set.
		redis.SetLogger(redisLogger{log})
	}
	msgLog, err := openMessageLog(ctx, cfg, stdout, log)
	if err != nil {
		return err
	}
	srv, err := newServer(cfg, log, msgLog)
	if err == nil {
		err = srv.Listen()
	}
	if err != nil {
		// Nothing was logged through it yet.
		_ = msgLog.Close(ctx)
		return err
	}
	warnExposure(cfg, log)
	return srv.Serve(ctx)
}

// warnExposure logs the settings that work but expose the server: after
// Listen, so that a bad setting is still the only line on stderr.
func warnExposure(cfg Config, log *slog.Logger) {
	if cfg.JWTSecret != "" && len(cfg.JWTSecret) < 32 {
		log.Warn("JWT_SECRET is shorter than 32 bytes: tokens signed with a short secret can be forged by brute force")
	}
	if len(cfg.APIKey) < 32 {
		log.Warn("PUSHER_API_KEY is shorter than 32 bytes: a short key can be guessed; use 32 random bytes or more")
	}
	if cfg.InternalAddr == "" {
		log.Warn("/send and /metrics are served on the public listener: set -internal-addr to keep them off the network browsers reach")
		if cfg.Pprof {
			log.Warn("-pprof without -internal-addr: profiles are served on the public listener")
		}
	}
}

func printUsage(w io.Writer) {
	var cfg Config
	var origins string
	fs := newFlagSet(&cfg, &origins)
	fs.SetOutput(w)
	// Like flag's PrintDefaults below, usage text has nowhere to report
	// a failed write.
	_, _ = io.WriteString(w, usageHead)
	fs.PrintDefaults()
}

// usageHead is what -h prints before the flags.
const usageHead = `Usage: go-pusher [flags]            serve
       go-pusher token -uid U [-ttl 1h] [-iat T]
                                   print a client token signed with JWT_SECRET
       go-pusher healthcheck [-addr A] [-ready]
                                   exit 0 when a server's /healthz (or /readyz) answers 200:
                                   a container's health check, where there is no curl

Secrets come from the environment: JWT_SECRET, PUSHER_API_KEY, PUSHER_MYSQL_DSN, PUSHER_REDIS_URL.
Every flag can also be set as PUSHER_<FLAG> (-send-buffer: PUSHER_SEND_BUFFER); a flag wins.

Flags:
`

// runToken is "go-pusher token -uid U [-ttl D]".
func runToken(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("go-pusher token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	uid := fs.String("uid", "", "the uid the token names (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid (0: no expiry)")
	iatFlag := fs.String("iat", "", "when the token says it was issued: an RFC 3339 time, or a duration before now such as 10m (default now); try revocation with an older token")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	now := time.Now()
	iat := now
	if *iatFlag != "" {
		if d, err := time.ParseDuration(*iatFlag); err == nil && d >= 0 {
			iat = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, *iatFlag); err == nil {
			iat = t
		} else {
			return fmt.Errorf("token: invalid -iat %q: want an RFC 3339 time or a duration before now (10m)", *iatFlag)
		}
	}
	secret := getenv("JWT_SECRET")
	switch {
	case *uid == "":
		return errors.New("token: -uid is required")
	case *ttl < 0:
		return fmt.Errorf("token: invalid -ttl %s: must not be negative", *ttl)
	case secret == "":
		return errors.New("token: JWT_SECRET is required")
	}
	tok, err := IssueTokenAt(secret, *uid, *ttl, now, iat)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	fmt.Fprintln(stdout, tok) //nolint:errcheck // a token that was not written should exit 1; returning it changes behaviour, left out of the lint pass
	return nil
}

// healthcheckTimeout bounds "go-pusher healthcheck": below the 5 s a
// container engine gives a health check by default, and well below the
// interval between two.
const healthcheckTimeout = 3 * time.Second

// runHealthcheck is "go-pusher healthcheck [-addr A] [-ready]": GET
// /healthz (or /readyz) of the server at A, exit 0 on 200. A defaults to
// the listener that serves it, read from the same environment as the
// server's (PUSHER_INTERNAL_ADDR, else PUSHER_ADDR, else :8181), so that a
// container's HEALTHCHECK needs no arguments; an address without a host
// or with a wildcard one is asked on loopback.
func runHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("go-pusher healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := cmp.Or(getenv("PUSHER_INTERNAL_ADDR"), getenv("PUSHER_ADDR"), ":8181")
	addr := fs.String("addr", def, "the server's listener that serves /healthz: -internal-addr when it has one, else -addr")
	ready := fs.Bool("ready", false, "ask /readyz (every dependency answers) instead of /healthz (the process serves)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("healthcheck: invalid -addr %q: want host:port", *addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	u := (&url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: path}).String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// Straight to the server: no HTTP_PROXY of the environment, no
	// redirect followed.
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512)) // only to show; the status decides
	_ = resp.Body.Close()                                 // read to the end or not, the process exits next
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", u, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(stdout, "%s: %s\n", u, strings.TrimSpace(string(body))) //nolint:errcheck // the status decides the exit code, not the note
	return nil
}
