package main

import (
	"io"
	"net"
	"os"
	"sync"
	"testing"
)

// proxyMode is what a tcpProxy does with connections.
type proxyMode int

const (
	proxyForward   proxyMode = iota // pass bytes both ways
	proxyCut                        // close every connection, new ones at once
	proxyBlackhole                  // hold connections and pass nothing: a blackhole
)

// tcpProxy stands between the server and a dependency (MySQL, Redis) so
// that a test can cut the network and restore it, with the same address
// throughout.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	mode   proxyMode
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.setMode(proxyCut)
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

// setMode switches the proxy and closes every connection it holds: a cut
// ends them as a network failure would, and a restored network resets
// what a blackhole held (rather than leaving it stuck until timeouts).
func (p *tcpProxy) setMode(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed at cleanup
		}
		p.mu.Lock()
		mode := p.mode
		switch mode {
		case proxyCut:
			c.Close()
		case proxyBlackhole:
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if mode == proxyForward {
			p.forward(c)
		}
	}
}

func (p *tcpProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.mode != proxyForward {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		// An error is the cut or a peer closing: either ends both.
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	p.wg.Go(func() { pipe(up, c) })
	p.wg.Go(func() { pipe(c, up) })
}

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
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
