package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"go-pusher/internal/cluster"
	"go-pusher/message"
)

// Config is every setting of the server. Each field has a flag and an
// environment variable PUSHER_<FLAG> of the same meaning; a flag given on
// the command line wins. Secrets come from the environment only, because
// flags show in ps.
type Config struct {
	Addr         string // public listener: /ws and /
	InternalAddr string // when set, /send, /metrics, /healthz, /readyz listen only here

	JWTSecret string // HMAC secret for client tokens (JWT_SECRET)
	// An identity provider's keys and claims (-jwks-url and the -jwt-*
	// flags): asymmetric tokens verified with the keys of a JWKS.
	JWKSURL     string
	JWKSRefresh time.Duration
	JWTIssuer   string
	JWTAudience string
	JWTUIDClaim string
	RevokeTTL   time.Duration // how long a revocation of /disconnect lasts

	// Presence webhooks: where online/offline events go, the secret that
	// signs them (PUSHER_WEBHOOK_SECRET), how long an offline is held back
	// and how long a batch is retried.
	WebhookURL          string
	WebhookSecret       string
	WebhookOfflineDelay time.Duration
	WebhookRetry        time.Duration
	APIKey              string // key backend apps present on /send (PUSHER_API_KEY)

	MessageLog        string        // stdout, mysql or none
	MessageLogTimeout time.Duration // longest /send waits for the message log
	MySQLDSN          string        // PUSHER_MYSQL_DSN
	RedisURL          string        // PUSHER_REDIS_URL; cluster mode when set
	RedisPrefix       string        // prefix of this cluster's Redis keys and channels

	// MySQLBatchSize and MySQLBatchInterval bound a group commit of the
	// mysql log: a batch is written at this many rows or this long after
	// its first row, whichever comes first.
	MySQLBatchSize     int
	MySQLBatchInterval time.Duration

	AllowedOrigins  []string // Origin allow-list for /ws; "*" allows all
	MaxMessageSize  int      // largest /send message, bytes
	SendBuffer      int      // per-connection queue length
	MaxConnsPerUser int
	MaxMulticast    int
	MaxBatch        int           // items in one /send/batch
	MaxBatchBytes   int64         // bytes of a /send/batch body
	IdempotencyTTL  time.Duration // how long a finished idempotency key is remembered (0: keys off)
	IdempotencyMem  int64         // single node: most bytes of remembered keys
	PingInterval    time.Duration
	PongWait        time.Duration
	WriteTimeout    time.Duration
	ShutdownTimeout time.Duration
	HistorySize     int
	HistoryTTL      time.Duration
	HistoryBytes    int64
	LogFormat       string // text or json
	LogLevel        string // debug, info, warn or error
	Console         bool
	Pprof           bool
	ShowVersion     bool
}

// maxMessageSizeLimit bounds -max-message-size: the MySQL log stores
// messages in a MEDIUMTEXT column.
const maxMessageSizeLimit = 16<<20 - 1

// newFlagSet declares every flag of the server into cfg, with its default.
func newFlagSet(cfg *Config, origins *string) *flag.FlagSet {
	fs := flag.NewFlagSet("go-pusher", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.Addr, "addr", ":8181", "public listener: /ws, / and (unless -internal-addr) everything else")
	fs.StringVar(&cfg.InternalAddr, "internal-addr", "", "when set, /send, /metrics, /healthz, /readyz are served only here")
	fs.StringVar(&cfg.JWKSURL, "jwks-url", "", "an identity provider's JWKS (https, or http on loopback): tokens signed with its keys are accepted")
	fs.DurationVar(&cfg.JWKSRefresh, "jwks-refresh", time.Hour, "how often the JWKS is fetched again")
	fs.StringVar(&cfg.JWTIssuer, "jwt-issuer", "", "when set, a token's iss must equal it")
	fs.StringVar(&cfg.JWTAudience, "jwt-audience", "", "when set, a token's aud must contain it")
	fs.StringVar(&cfg.JWTUIDClaim, "jwt-uid-claim", "uid", "the claim that holds the uid (sub for most identity providers)")
	fs.DurationVar(&cfg.RevokeTTL, "revoke-ttl", 24*time.Hour, "how long POST /disconnect with revoke refuses the uids' older tokens")
	fs.StringVar(&cfg.WebhookURL, "webhook-url", "", "where presence events (online, offline) are POSTed, signed with PUSHER_WEBHOOK_SECRET")
	fs.DurationVar(&cfg.WebhookOfflineDelay, "webhook-offline-delay", 5*time.Second, "an offline event waits this long for the uid to come back (a reload sends nothing)")
	fs.DurationVar(&cfg.WebhookRetry, "webhook-retry", time.Minute, "how long a batch of events is retried before it is dropped")
	fs.StringVar(&cfg.MessageLog, "message-log", "stdout", "message log: stdout, mysql or none")
	fs.DurationVar(&cfg.MessageLogTimeout, "message-log-timeout", 5*time.Second, "longest /send waits for the message log before it answers 503")
	fs.IntVar(&cfg.MySQLBatchSize, "mysql-batch-size", message.DefaultMySQLBatchSize, "mysql log: most rows in one INSERT (group commit)")
	fs.DurationVar(&cfg.MySQLBatchInterval, "mysql-batch-interval", message.DefaultMySQLBatchInterval, "mysql log: longest a row waits for its batch to fill")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", "pusher", "prefix of the Redis channels and keys of this cluster (several clusters can share one Redis)")
	fs.StringVar(origins, "allowed-origins", "*", "comma-separated Origin allow-list for /ws (* allows any)")
	fs.IntVar(&cfg.MaxMessageSize, "max-message-size", 65536, "largest /send message, bytes")
	fs.IntVar(&cfg.SendBuffer, "send-buffer", 128, "per-connection queue; a connection with a full queue is closed with 1013")
	fs.IntVar(&cfg.MaxConnsPerUser, "max-conns-per-user", 16, "further connections of that uid are refused")
	fs.IntVar(&cfg.MaxMulticast, "max-multicast", 10000, "most uids in one /send")
	fs.IntVar(&cfg.MaxBatch, "max-batch", 1000, "most messages in one /send/batch")
	fs.Int64Var(&cfg.MaxBatchBytes, "max-batch-bytes", 8<<20, "largest /send/batch body, bytes")
	fs.DurationVar(&cfg.IdempotencyTTL, "idempotency-ttl", 5*time.Minute, "how long an idempotency key's answer is remembered (0: keys are ignored)")
	fs.Int64Var(&cfg.IdempotencyMem, "idempotency-bytes", 64<<20, "single node: most bytes of remembered idempotency keys (oldest go first)")
	fs.DurationVar(&cfg.PingInterval, "ping-interval", 25*time.Second, "server ping period")
	fs.DurationVar(&cfg.PongWait, "pong-wait", 60*time.Second, "a connection silent this long is closed")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", 10*time.Second, "longest one write to a connection may take")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "drain limit on SIGINT/SIGTERM")
	fs.IntVar(&cfg.HistorySize, "history-size", 100, "messages kept per uid for recovery (0: off)")
	fs.DurationVar(&cfg.HistoryTTL, "history-ttl", 5*time.Minute, "how long they are kept")
	fs.Int64Var(&cfg.HistoryBytes, "history-bytes", 64<<20, "most bytes of history a node keeps in memory, all uids together (oldest go first)")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&cfg.Console, "console", true, "serve the console page at /")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve net/http/pprof at /debug/pprof/ beside /metrics (use with -internal-addr)")
	fs.BoolVar(&cfg.ShowVersion, "version", false, "print the version and exit")
	return fs
}

// envName is the environment variable of a flag: PUSHER_ and the flag's
// name in upper case with - as _.
func envName(flagName string) string {
	return "PUSHER_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads args (without the program name) and the environment
// through getenv. Flags on the command line win over the environment. It
// returns every problem at once, one line each, naming the setting.
func parseConfig(args []string, getenv func(string) string) (Config, error) {
	var cfg Config
	var origins string
	fs := newFlagSet(&cfg, &origins)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, flag.ErrHelp
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.ShowVersion {
		return cfg, nil
	}

	var errs []error
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		v := getenv(env)
		if given[f.Name] || v == "" || f.Name == "version" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("invalid %s %q: want %s", env, v, kindOf(f)))
			// A failed Set may have zeroed the value; keep the default so
			// that only this line reports the setting.
			_ = fs.Set(f.Name, f.DefValue)
		}
	})
	cfg.JWTSecret = getenv("JWT_SECRET")
	cfg.APIKey = getenv("PUSHER_API_KEY")
	cfg.MySQLDSN = getenv("PUSHER_MYSQL_DSN")
	cfg.RedisURL = getenv("PUSHER_REDIS_URL")
	cfg.WebhookSecret = getenv("PUSHER_WEBHOOK_SECRET")
	cfg.AllowedOrigins = splitList(origins)

	errs = append(errs, cfg.validate()...)
	return cfg, errors.Join(errs...)
}

// kindOf names what a flag's value must be, for error messages.
func kindOf(f *flag.Flag) string {
	switch f.Value.(flag.Getter).Get().(type) {
	case time.Duration:
		return "a duration such as 10s or 1m30s"
	case int, int64:
		return "an integer"
	case bool:
		return "true or false"
	}
	return "a valid value"
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// validate returns one error per bad setting, each naming it.
func (c *Config) validate() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if c.JWTSecret == "" && c.JWKSURL == "" {
		bad("JWT_SECRET or -jwks-url is required: the HMAC secret that signs client tokens, or an identity provider's keys")
	}
	if c.JWKSURL != "" {
		if err := checkJWKSURL(c.JWKSURL); err != nil {
			bad("invalid -jwks-url: %v", err)
		}
		if c.JWKSRefresh < time.Minute {
			bad("invalid -jwks-refresh %s: want at least 1m", c.JWKSRefresh)
		}
	}
	if c.WebhookURL != "" {
		if u, err := url.Parse(c.WebhookURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("invalid -webhook-url: want http(s)://host/path")
		}
		if c.WebhookSecret == "" {
			bad("PUSHER_WEBHOOK_SECRET is required with -webhook-url: receivers check the events' signature with it")
		}
		if c.WebhookOfflineDelay < 0 || c.WebhookRetry <= 0 {
			bad("invalid -webhook-offline-delay or -webhook-retry: want durations, the retry positive")
		}
	}
	if c.RevokeTTL <= 0 {
		bad("invalid -revoke-ttl %s: want a positive duration", c.RevokeTTL)
	}
	if c.JWTUIDClaim == "" {
		bad("invalid -jwt-uid-claim: empty")
	}
	if c.APIKey == "" {
		bad("PUSHER_API_KEY is required: the key backend apps present on /send")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		bad("invalid -addr %q: %v", c.Addr, err)
	}
	if c.InternalAddr != "" {
		if _, _, err := net.SplitHostPort(c.InternalAddr); err != nil {
			bad("invalid -internal-addr %q: %v", c.InternalAddr, err)
		} else if c.InternalAddr == c.Addr && !strings.HasSuffix(c.Addr, ":0") {
			bad("invalid -internal-addr %q: same as -addr", c.InternalAddr)
		}
	}
	switch c.MessageLog {
	case "stdout", "none":
	case "mysql":
		if c.MySQLDSN == "" {
			bad("PUSHER_MYSQL_DSN is required with -message-log=mysql")
		} else if err := message.CheckMySQLDSN(c.MySQLDSN); err != nil {
			bad("invalid PUSHER_MYSQL_DSN: %v", err)
		}
	default:
		bad("invalid -message-log %q: want stdout, mysql or none", c.MessageLog)
	}
	if c.RedisURL != "" {
		if err := cluster.CheckURL(c.RedisURL); err != nil {
			errs = append(errs, err)
		}
	}
	if c.RedisPrefix == "" || strings.ContainsAny(c.RedisPrefix, " \t\r\n") {
		bad("invalid -redis-prefix %q: want a non-empty word", c.RedisPrefix)
	}
	if len(c.AllowedOrigins) == 0 {
		bad("invalid -allowed-origins: empty (use * to allow any origin)")
	}
	for _, o := range c.AllowedOrigins {
		if err := checkOriginPattern(o); err != nil {
			bad("invalid -allowed-origins entry %q: %v", o, err)
		}
	}
	positive := func(name string, v int) {
		if v < 1 {
			bad("invalid -%s %d: must be at least 1", name, v)
		}
	}
	positive("max-message-size", c.MaxMessageSize)
	if c.MaxMessageSize > maxMessageSizeLimit {
		bad("invalid -max-message-size %d: at most %d", c.MaxMessageSize, maxMessageSizeLimit)
	}
	positive("send-buffer", c.SendBuffer)
	positive("max-conns-per-user", c.MaxConnsPerUser)
	positive("max-multicast", c.MaxMulticast)
	positive("max-batch", c.MaxBatch)
	if c.MaxBatchBytes < 1 {
		bad("invalid -max-batch-bytes %d: must be at least 1", c.MaxBatchBytes)
	}
	if c.IdempotencyTTL < 0 {
		bad("invalid -idempotency-ttl %s: must not be negative", c.IdempotencyTTL)
	}
	if c.IdempotencyMem < 1 {
		bad("invalid -idempotency-bytes %d: must be at least 1", c.IdempotencyMem)
	}
	positive("mysql-batch-size", c.MySQLBatchSize)
	if c.HistorySize < 0 {
		bad("invalid -history-size %d: must not be negative", c.HistorySize)
	}
	if c.HistoryBytes < 0 {
		bad("invalid -history-bytes %d: must not be negative", c.HistoryBytes)
	}
	durations := []struct {
		name string
		v    time.Duration
	}{
		{"message-log-timeout", c.MessageLogTimeout},
		{"mysql-batch-interval", c.MySQLBatchInterval},
		{"ping-interval", c.PingInterval},
		{"pong-wait", c.PongWait},
		{"write-timeout", c.WriteTimeout},
		{"shutdown-timeout", c.ShutdownTimeout},
		{"history-ttl", c.HistoryTTL},
	}
	for _, d := range durations {
		if d.v <= 0 {
			bad("invalid -%s %s: must be positive", d.name, d.v)
		}
	}
	if c.PingInterval > 0 && c.PongWait <= c.PingInterval {
		bad("invalid -pong-wait %s: must be longer than -ping-interval %s", c.PongWait, c.PingInterval)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("invalid -log-format %q: want text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		bad("invalid -log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	return errs
}

// checkOriginPattern accepts "*", an origin such as https://app.example.com
// or http://localhost:3000, and a wildcard subdomain https://*.example.com.
func checkOriginPattern(p string) error {
	if p == "*" {
		return nil
	}
	u, err := url.Parse(p)
	if err != nil {
		return err
	}
	if u.Scheme == "" || u.Host == "" {
		return errors.New("want scheme://host[:port]")
	}
	if u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errors.New("an origin has no path, query, fragment or user")
	}
	return nil
}

// checkJWKSURL: keys fetched in the clear could be anyone's, so a JWKS
// URL is https, or http on a loopback address (a sidecar, a test).
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("want https://host/path")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			return nil
		}
		return errors.New("http only on a loopback address; want https")
	}
	return fmt.Errorf("scheme %q: want https", u.Scheme)
}
