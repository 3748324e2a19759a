//go:build unix

package main

import (
	"errors"
	"net"
	"syscall"
)

// tryWrite writes b to conn's socket with one non-blocking write and
// returns how much it took: less than len(b), and no error, when the
// socket's buffer is full or conn is not a socket it can write to
// directly. It never waits.
func tryWrite(conn net.Conn, b []byte) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, nil
	}
	var n int
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), b)
			if werr != syscall.EINTR {
				return true // one attempt: never wait for the socket
			}
		}
	})
	switch {
	case err != nil: // closed, or the write deadline passed
		return 0, err
	case errors.Is(werr, syscall.EAGAIN):
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return n, nil
}
