//go:build !unix

package main

import "net"

// tryWrite writes nothing where non-blocking socket writes are not
// available: every frame goes to a writer goroutine.
func tryWrite(net.Conn, []byte) (int, error) { return 0, nil }
