package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
)

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: %w", s, err)
	}
	return l, nil
}

// newLogger returns the server's structured logger writing to w.
func newLogger(format, level string, w io.Writer) *slog.Logger {
	l, err := parseLevel(level)
	if err != nil {
		l = slog.LevelInfo // validated before; keep a logger anyway
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// redactURL returns u as a string with the value of every token parameter
// replaced, so that a logged URL never carries a credential. The query is
// decoded first: "%74oken" is a token parameter too. A pair the decoder
// refuses is left out.
func redactURL(u *url.URL) string {
	if u.RawQuery == "" {
		return u.String()
	}
	q := u.Query()
	for k := range q {
		if strings.EqualFold(k, "token") {
			q[k] = []string{"REDACTED"}
		}
	}
	r := *u
	r.RawQuery = q.Encode()
	return r.String()
}

// redisLogger takes go-redis's own log lines (a pool that failed to dial,
// for one) into the server's log as one structured record each, instead
// of go-redis's plain lines on stderr.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "go-redis: "+strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "), "source", "go-redis")
}
