//go:build !unix

package main

import "net"

// laneSupported: without MSG_PEEK the lane would have to read the first
// bytes of every connection, /ws upgrades included; it is not used.
const laneSupported = false

func peekSend(net.Conn) laneVerdict { return laneHandOver }
