package main

import (
	"net"
	"testing"

	"go-pusher/internal/testutil"
)

// dialable reports whether a TCP listener answers at hostport.
func dialable(hostport string) bool {
	c, err := net.Dial("tcp", hostport)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// skipOrFail skips the test when a service is missing, or fails it under
// CI=true.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	testutil.SkipOrFail(t, format, args...)
}
