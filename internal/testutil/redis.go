package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/url"
	"os"
	"testing"
)

// Redis returns the Redis URL for tests (PUSHER_TEST_REDIS_URL, or
// redis://127.0.0.1:6379/0), skipping or, under CI=true, failing when
// Redis does not answer.
func Redis(t testing.TB) *url.URL {
	t.Helper()
	raw := os.Getenv("PUSHER_TEST_REDIS_URL")
	if raw == "" {
		raw = "redis://127.0.0.1:6379/0"
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("PUSHER_TEST_REDIS_URL: %v", err)
	}
	if !Dialable(u.Host) {
		SkipOrFail(t, "Redis is not running at %s (make test starts it)", u.Host)
	}
	return u
}

// Via returns u with its host replaced by hostport (a proxy's).
func Via(u *url.URL, hostport string) string {
	v := *u
	v.Host = hostport
	return v.String()
}

// Prefix is a Redis key prefix of the test's own, so that tests sharing a
// Redis never see each other's messages.
func Prefix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)
}

// Dialable reports whether a TCP listener answers at hostport.
func Dialable(hostport string) bool {
	c, err := net.Dial("tcp", hostport)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
