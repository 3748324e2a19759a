//go:build unix

package main

import "syscall"

// attempt is the callback of a non-blocking write: one write(2), retried
// only when interrupted. It always reports done, so the runtime never
// waits for the socket to become writable.
func (f *nowFrame) attempt(fd uintptr) bool {
	for {
		n, err := syscall.Write(int(fd), f.b)
		switch err {
		case nil:
			f.n = n
		case syscall.EINTR:
			continue
		case syscall.EAGAIN: // full: the caller hands off
		default:
			f.err = err
		}
		return true
	}
}
