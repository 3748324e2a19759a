//go:build unix

package main

import (
	"net"
	"syscall"
)

// laneSupported: the lane peeks with MSG_PEEK.
const laneSupported = true

// peekSend waits for c's first bytes and looks at them without reading
// them (MSG_PEEK): a connection that does not start as a POST /send goes
// to net/http as it came, so that a /ws upgrade keeps its *net.TCPConn
// (writev, and writes in place from the /send handler). A first packet
// shorter than "POST /send" that could still be one is served by the
// lane, which hands it over later if it is not.
func peekSend(c net.Conn) laneVerdict {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return laneHandOver
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return laneDrop
	}
	var buf [len(sendPrefix)]byte
	var n int
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK)
			if perr == syscall.EINTR {
				continue
			}
			return perr != syscall.EAGAIN
		}
	})
	switch {
	case err != nil, perr != nil, n <= 0:
		return laneDrop // a timeout, a reset, or closed before a byte
	case string(buf[:n]) != sendPrefix[:n]:
		return laneHandOver
	}
	return laneServe
}
