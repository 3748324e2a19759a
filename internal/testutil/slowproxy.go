package testutil

import (
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// SlowProxy forwards to a Redis and can make it slow or hung: with Delay
// set, the next reply array from Redis waits Wait before it is passed on;
// with Frozen set, every reply is held (a hung Redis).
type SlowProxy struct {
	ln     net.Listener
	Delay  atomic.Bool
	Frozen atomic.Bool
	wait   time.Duration
}

// StartSlowProxy forwards a loopback port to target until the test ends.
func StartSlowProxy(t testing.TB, target string, wait time.Duration) *SlowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &SlowProxy{ln: ln, wait: wait}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Go(func() {
				_, _ = io.Copy(up, c) // ends when either side closes: that is its error
				up.Close()
				c.Close()
			})
			wg.Go(func() { p.replies(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.Frozen.Store(false)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// Addr is the proxy's address, to use instead of the target's.
func (p *SlowProxy) Addr() string { return p.ln.Addr().String() }

// replies passes what Redis answers on up to c, slowly when asked.
func (p *SlowProxy) replies(c, up net.Conn) {
	defer c.Close()
	defer up.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		for p.Frozen.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			// "*3\r\n": the reply array of a script or a pipeline.
			if strings.HasPrefix(string(buf[:n]), "*3\r\n") && p.Delay.CompareAndSwap(true, false) {
				time.Sleep(p.wait)
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
