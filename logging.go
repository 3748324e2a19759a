package main

import (
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
// replaced, so that a logged URL never carries a credential.
func redactURL(u *url.URL) string {
	if u.RawQuery == "" || !strings.Contains(strings.ToLower(u.RawQuery), "token") {
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
