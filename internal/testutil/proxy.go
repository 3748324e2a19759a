package testutil

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// ProxyMode is what a Proxy does with connections.
type ProxyMode int

// The modes of a Proxy.
const (
	Forward   ProxyMode = iota // pass bytes both ways
	Cut                        // close every connection, and new ones at once
	Blackhole                  // hold connections open and pass nothing
)

// Proxy stands between a server and a dependency (MySQL, Redis) so that a
// test can cut the network and restore it, with the same address
// throughout.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	mode   ProxyMode
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup

	accepted atomic.Int64
}

// StartProxy forwards a loopback port to target until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.SetMode(Cut)
		p.wg.Wait()
	})
	return p
}

// Accepted counts the connections the proxy took: how many a client
// opened (a pool that reuses its connections opens few).
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Addr is the proxy's address, to use instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetMode switches the proxy and closes every connection it holds: a cut
// ends them as a network failure would, and a restored network resets
// what a blackhole held (rather than leaving it stuck until timeouts).
func (p *Proxy) SetMode(m ProxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Stop closes the proxy's listener and every connection: from now on a
// dial is refused, as when the dependency is down.
func (p *Proxy) Stop() {
	p.ln.Close()
	p.SetMode(Cut)
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed by Stop or at cleanup
		}
		p.accepted.Add(1)
		p.mu.Lock()
		mode := p.mode
		switch mode {
		case Cut:
			c.Close()
		case Blackhole:
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if mode == Forward {
			p.forward(c)
		}
	}
}

func (p *Proxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.mode != Forward { // cut while dialling
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
