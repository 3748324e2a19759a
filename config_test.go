package main

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := parseConfig(nil, testEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Addr: ":8181", JWTSecret: testSecret, APIKey: testAPIKey,
		MessageLog: "stdout", MessageLogTimeout: 5 * time.Second,
		AllowedOrigins: []string{"*"}, MaxMessageSize: 65536, SendBuffer: 128,
		MaxConnsPerUser: 16, MaxMulticast: 10000,
		PingInterval: 25 * time.Second, PongWait: 60 * time.Second,
		WriteTimeout: 10 * time.Second, ShutdownTimeout: 10 * time.Second,
		HistorySize: 100, HistoryTTL: 5 * time.Minute,
		LogFormat: "text", LogLevel: "info", Console: true,
	}
	// Fields added by later features keep their own defaults; compare the
	// contract's.
	got := cfg
	if got.Addr != want.Addr || got.MessageLog != want.MessageLog || got.MessageLogTimeout != want.MessageLogTimeout ||
		strings.Join(got.AllowedOrigins, ",") != "*" || got.MaxMessageSize != want.MaxMessageSize ||
		got.SendBuffer != want.SendBuffer || got.MaxConnsPerUser != want.MaxConnsPerUser ||
		got.MaxMulticast != want.MaxMulticast || got.PingInterval != want.PingInterval ||
		got.PongWait != want.PongWait || got.WriteTimeout != want.WriteTimeout ||
		got.ShutdownTimeout != want.ShutdownTimeout || got.HistorySize != want.HistorySize ||
		got.HistoryTTL != want.HistoryTTL || got.LogFormat != want.LogFormat || got.LogLevel != want.LogLevel ||
		got.Console != want.Console || got.InternalAddr != "" || got.JWTSecret != testSecret || got.APIKey != testAPIKey {
		t.Errorf("defaults = %+v\nwant %+v", got, want)
	}
}

// TestConfigPrecedence: a flag on the command line wins over the
// environment, which wins over the default.
func TestConfigPrecedence(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		get  func(Config) any
		want any
	}{
		{"default", nil, nil, func(c Config) any { return c.SendBuffer }, 128},
		{"env", nil, map[string]string{"PUSHER_SEND_BUFFER": "7"}, func(c Config) any { return c.SendBuffer }, 7},
		{"flag over env", []string{"-send-buffer", "9"}, map[string]string{"PUSHER_SEND_BUFFER": "7"}, func(c Config) any { return c.SendBuffer }, 9},
		{"flag equals form", []string{"-send-buffer=11"}, nil, func(c Config) any { return c.SendBuffer }, 11},
		{"duration env", nil, map[string]string{"PUSHER_PING_INTERVAL": "5s"}, func(c Config) any { return c.PingInterval }, 5 * time.Second},
		{"bool env", nil, map[string]string{"PUSHER_CONSOLE": "false"}, func(c Config) any { return c.Console }, false},
		{"bool flag over env", []string{"-console=true"}, map[string]string{"PUSHER_CONSOLE": "false"}, func(c Config) any { return c.Console }, true},
		{"addr env", nil, map[string]string{"PUSHER_ADDR": "127.0.0.1:9000"}, func(c Config) any { return c.Addr }, "127.0.0.1:9000"},
		{
			"origins list",
			[]string{"-allowed-origins", " https://a.com ,https://b.com,"},
			nil,
			func(c Config) any { return strings.Join(c.AllowedOrigins, "|") }, "https://a.com|https://b.com",
		},
		{"message log env", nil, map[string]string{"PUSHER_MESSAGE_LOG": "none"}, func(c Config) any { return c.MessageLog }, "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig(tt.args, testEnv(tt.env))
			if err != nil {
				t.Fatalf("parseConfig(%q, %v): %v", tt.args, tt.env, err)
			}
			if got := tt.get(cfg); got != tt.want {
				t.Errorf("parseConfig(%q, %v) = %v, want %v", tt.args, tt.env, got, tt.want)
			}
		})
	}
}

// TestConfigErrorsNameTheSetting: every bad setting is refused with a line
// that names it.
func TestConfigErrorsNameTheSetting(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no jwt secret", nil, map[string]string{"JWT_SECRET": ""}, "JWT_SECRET or -jwks-url is required"},
		{"no api key", nil, map[string]string{"PUSHER_API_KEY": ""}, "PUSHER_API_KEY is required"},
		{"bad duration flag", []string{"-ping-interval", "soon"}, nil, "-ping-interval"},
		{"bad duration env", nil, map[string]string{"PUSHER_PONG_WAIT": "soon"}, `invalid PUSHER_PONG_WAIT "soon"`},
		{"bad int env", nil, map[string]string{"PUSHER_SEND_BUFFER": "many"}, `invalid PUSHER_SEND_BUFFER "many"`},
		{"unknown message log", []string{"-message-log", "kafka"}, nil, `invalid -message-log "kafka"`},
		{"mysql without dsn", []string{"-message-log", "mysql"}, nil, "PUSHER_MYSQL_DSN is required"},
		{"zero send buffer", []string{"-send-buffer", "0"}, nil, "invalid -send-buffer 0"},
		{"negative conns", []string{"-max-conns-per-user", "-1"}, nil, "invalid -max-conns-per-user -1"},
		{"zero multicast", []string{"-max-multicast", "0"}, nil, "invalid -max-multicast 0"},
		{"huge message", []string{"-max-message-size", "99999999"}, nil, "invalid -max-message-size 99999999"},
		{"zero message", []string{"-max-message-size", "0"}, nil, "invalid -max-message-size 0"},
		{"pong not after ping", []string{"-ping-interval", "30s", "-pong-wait", "30s"}, nil, "invalid -pong-wait 30s: must be longer than -ping-interval 30s"},
		{"zero write timeout", []string{"-write-timeout", "0s"}, nil, "invalid -write-timeout 0s"},
		{"negative shutdown", []string{"-shutdown-timeout", "-1s"}, nil, "invalid -shutdown-timeout -1s"},
		{"negative history", []string{"-history-size", "-1"}, nil, "invalid -history-size -1"},
		{"zero history ttl", []string{"-history-ttl", "0s"}, nil, "invalid -history-ttl 0s"},
		{"bad log format", []string{"-log-format", "xml"}, nil, `invalid -log-format "xml"`},
		{"bad log level", []string{"-log-level", "loud"}, nil, `invalid -log-level "loud"`},
		{"bad addr", []string{"-addr", "8181"}, nil, `invalid -addr "8181"`},
		{"bad internal addr", []string{"-internal-addr", "nope"}, nil, `invalid -internal-addr "nope"`},
		{"same internal addr", []string{"-addr", ":9000", "-internal-addr", ":9000"}, nil, `invalid -internal-addr ":9000": same as -addr`},
		{"bad origin", []string{"-allowed-origins", "example.com"}, nil, `invalid -allowed-origins entry "example.com"`},
		{"origin with path", []string{"-allowed-origins", "https://a.com/x"}, nil, `invalid -allowed-origins entry "https://a.com/x"`},
		{"empty origins", []string{"-allowed-origins", ","}, nil, "invalid -allowed-origins: empty"},
		{"bad redis url", nil, map[string]string{"PUSHER_REDIS_URL": "http://localhost"}, "invalid PUSHER_REDIS_URL"},
		{"unknown flag", []string{"-no-such-flag"}, nil, "-no-such-flag"},
		{"stray argument", []string{"serve"}, nil, `unexpected argument "serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(tt.args, testEnv(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseConfig(%q, %v) error = %v, want one naming %q", tt.args, tt.env, err, tt.want)
			}
		})
	}
}

func TestConfigReportsEveryProblemOnItsOwnLine(t *testing.T) {
	_, err := parseConfig([]string{"-send-buffer", "0", "-log-format", "xml"}, testEnv(map[string]string{"PUSHER_API_KEY": ""}))
	if err == nil {
		t.Fatal("want errors")
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 3 {
		t.Fatalf("error has %d lines, want 3:\n%v", len(lines), err)
	}
}

func TestConfigNeverLogsSecrets(t *testing.T) {
	_, err := parseConfig([]string{"-send-buffer", "0"}, testEnv(nil))
	if err == nil || strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), testAPIKey) {
		t.Fatalf("error %v mentions a secret", err)
	}
	_, err = parseConfig(nil, testEnv(map[string]string{"PUSHER_REDIS_URL": "http://user:hunter2@host"}))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error %v shows the Redis password", err)
	}
}

// TestREADMEListsEveryFlag keeps the README's configuration table in step
// with the flags: a row per flag, naming its environment variable.
func TestREADMEListsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `-([a-z-]+)` \\|(.*)$").FindAllStringSubmatch(string(readme), -1) {
		rows[m[1]] = m[2]
	}
	var cfg Config
	var origins string
	newFlagSet(&cfg, &origins).VisitAll(func(f *flag.Flag) {
		row, ok := rows[f.Name]
		switch {
		case !ok:
			t.Errorf("README.md's configuration table has no row for -%s", f.Name)
		case f.Name != "version" && !strings.Contains(row, envName(f.Name)):
			t.Errorf("README.md's row for -%s does not name %s", f.Name, envName(f.Name))
		}
	})
	for _, env := range []string{"JWT_SECRET", "PUSHER_API_KEY", "PUSHER_MYSQL_DSN", "PUSHER_REDIS_URL"} {
		if !strings.Contains(string(readme), "| `"+env+"`") {
			t.Errorf("README.md's configuration table has no row for %s", env)
		}
	}
}
