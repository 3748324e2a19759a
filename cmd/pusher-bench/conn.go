package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// closeWait bounds a close handshake the tool starts: the close frame is
// written within it, and the server's answer is awaited as long again.
const closeWait = time.Second

// redialBackoff spaces the redials of a slot whose handshake failed, so a
// server that refuses does not see a busy loop.
const redialBackoff = 100 * time.Millisecond

// pool runs the slots: one goroutine per slot dials a connection, reads
// it, and, while redialing is on, dials again when the connection ends.
// A slot is one logical client (a uid's tab); its successive connections
// are its generations. With several nodes a slot dials them in turn.
type pool struct {
	r       *runner
	rep     *reporter
	wsURLs  []string            // /ws (Centrifugo: /connection/websocket) of each node
	dialers []*websocket.Dialer // one per source address

	ctx    context.Context // ended by stop: every connection closes
	cancel context.CancelFunc
	wg     sync.WaitGroup // the slot goroutines

	// redial makes slots dial again after a connection ends (churn).
	redial atomic.Bool
	// lifetime, when set, is how long a slot holds a connection before
	// closing it itself (0: until stop), and whether the close drops the
	// TCP connection without a close frame.
	lifetime func(slot int32, rnd *rand.Rand) (time.Duration, bool)

	// reconnect: connections ask for format=json, each slot keeps the last
	// offset it received and redials with ?since= it; a dropper per
	// connection drops it at random moments while phase is phaseDropping.
	reconnect bool
	phase     atomic.Int32
	dropping  atomic.Int64  // drops decided and not yet counted in unsettled
	steady    []atomic.Bool // by slot: connected, and recovered when dialled with since
	unsettled atomic.Int64  // slots not steady

	firstDials sync.WaitGroup // one per slot: done after its first handshake
	sem        chan struct{}  // bounds handshakes in flight
	open       atomic.Int64   // connections open now
	connected  atomic.Int64   // first handshakes that succeeded
	lastUp     atomic.Int64   // unix ns of the latest successful first handshake
}

func newPool(r *runner, rep *reporter) (*pool, error) {
	e := r.e
	var host string
	var wsURLs []string
	for _, node := range r.nodes {
		u, err := url.Parse(node)
		if err != nil {
			return nil, fmt.Errorf("-url: %w", err)
		}
		if u.Scheme == "https" {
			u.Scheme = "wss"
		} else {
			u.Scheme = "ws"
		}
		path := "/ws"
		if e.centrifugo() {
			path = centrifugoWSPath
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + path
		wsURLs = append(wsURLs, u.String())
		if host == "" {
			host = u.Hostname()
		} else if host != u.Hostname() {
			host = "-" // nodes on several hosts: the kernel chooses the source
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &pool{
		r: r, rep: rep, wsURLs: wsURLs, ctx: ctx, cancel: cancel, sem: make(chan struct{}, e.DialConcurrency),
		steady: make([]atomic.Bool, r.slots()),
	}
	p.unsettled.Store(int64(r.slots()))
	for _, src := range sourceAddrs(host, e.SourceAddrs) {
		nd := &net.Dialer{Timeout: e.RequestTimeout, LocalAddr: src}
		p.dialers = append(p.dialers, &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: e.RequestTimeout,
			// The server's messages are small; small buffers keep tens of
			// thousands of connections cheap for the tool too.
			ReadBufferSize:  2048,
			WriteBufferSize: 256,
		})
	}
	return p, nil
}

// sourceAddrs returns the local addresses to dial from: 127.0.0.1..n when
// host is a loopback address (all of 127/8 is local on Linux), else the
// kernel's choice.
func sourceAddrs(host string, n int) []net.Addr {
	ip := net.ParseIP(host)
	if host == "localhost" {
		ip = net.IPv4(127, 0, 0, 1)
	}
	if n == 0 || ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return []net.Addr{nil}
	}
	addrs := make([]net.Addr, n)
	for i := range addrs {
		addrs[i] = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i+1))}
	}
	return addrs
}

// start starts the goroutines of slots [from, to).
func (p *pool) start(from, to int) {
	for s := from; s < to; s++ {
		p.firstDials.Add(1)
		p.wg.Go(func() { p.runSlot(int32(s)) })
	}
}

// stop closes every connection (a close handshake each), ends redialing
// and waits for the slot goroutines.
func (p *pool) stop() {
	p.redial.Store(false)
	p.cancel()
	p.wg.Wait()
}

// waitFirstDials waits until every slot tried its first handshake, or ctx
// ends; it reports whether they all did.
func (p *pool) waitFirstDials(ctx context.Context) bool {
	done := make(chan struct{})
	go func() {
		p.firstDials.Wait() // ends: each slot's first dial is bounded by the handshake timeout
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		p.stop() // unblocks the slots, so the waiter above ends too
		<-done
		return false
	}
}

func (p *pool) runSlot(slot int32) {
	rnd := rand.New(rand.NewPCG(uint64(slot), 0x5eed))
	var pos streamPos // reconnect: the last offset this slot received
	first := true
	attempt := 0 // handshakes tried: each goes to the next node
	for gen := int32(0); ; {
		if first {
			select {
			case p.sem <- struct{}{}:
			case <-p.ctx.Done():
				p.firstDials.Done()
				return
			}
		}
		since := ""
		if p.reconnect && pos.known {
			since = pos.String()
		}
		dialStart := time.Now().UnixNano()
		node := p.wsURLs[(int(slot)+attempt)%len(p.wsURLs)]
		conn, hello, err := p.dial(slot, node, since)
		// Taken before the first dial counts as done: a /send issued
		// after connect returns is then after every first connection's
		// up, however late this goroutine reaches hold.
		up := time.Now().UnixNano()
		attempt++
		if err == nil {
			// Counted before the first dial is done, so that connect never
			// sees every handshake done and none of them open; hold
			// uncounts it.
			p.open.Add(1)
		}
		if first {
			<-p.sem
			if err == nil {
				p.connected.Add(1)
				p.lastUp.Store(up)
			}
			p.firstDials.Done()
			first = false
		}
		if err != nil {
			if p.ctx.Err() != nil {
				return // cut short by stop: not the server's failure
			}
			p.rep.emit(event{kind: evDialError, slot: slot, at: time.Now().UnixNano(), text: err.Error()})
			if !p.redial.Load() || !sleep(p.ctx, redialBackoff) {
				return
			}
			continue
		}
		run := &connRun{since: since != "", dial: dialStart, up: up, pos: &pos, dead: make(chan struct{}), hello: hello}
		if len(p.wsURLs) > 1 {
			run.node = strings.TrimPrefix(strings.TrimPrefix(node, "ws://"), "wss://")
			run.node = strings.TrimSuffix(strings.TrimSuffix(run.node, "/ws"), centrifugoWSPath)
		}
		run.canDrop.Store(pos.known)
		var life time.Duration
		var abrupt bool
		if p.lifetime != nil {
			life, abrupt = p.lifetime(slot, rnd)
		}
		p.hold(slot, gen, conn, life, abrupt, run, rnd)
		p.setSteady(slot, false)
		gen++
		if !p.redial.Load() || p.ctx.Err() != nil {
			return
		}
		if p.reconnect {
			e := p.r.e
			delay := e.RedialMin + time.Duration(rnd.Int64N(int64(e.RedialMax-e.RedialMin)+1))
			if !sleep(p.ctx, delay) {
				return
			}
		}
	}
}

// dial makes one handshake for slot to node (its /ws URL), with ?since=
// when not empty; its error is already a short class. With Centrifugo
// the handshake goes on to the connect reply (cfConnect), which it
// returns.
func (p *pool) dial(slot int32, node, since string) (*websocket.Conn, cfHello, error) {
	r := p.r
	user := int(slot) / r.e.ConnsPerUser
	d := p.dialers[int(slot)%len(p.dialers)]
	ctx, cancel := context.WithTimeout(p.ctx, r.e.RequestTimeout)
	defer cancel()
	if r.e.centrifugo() {
		return p.dialCentrifugo(ctx, d, node, user)
	}
	u := node + "?token=" + r.tokens[user]
	if p.reconnect {
		u += "&format=json"
	}
	if since != "" {
		u += "&since=" + url.QueryEscape(since)
	}
	conn, resp, err := d.DialContext(ctx, u, nil)
	if err != nil {
		return nil, cfHello{}, handshakeError(resp, err)
	}
	return conn, cfHello{}, nil
}

// handshakeError is the short class of a failed WebSocket handshake.
func handshakeError(resp *http.Response, err error) error {
	if resp != nil {
		// gorilla has read what it keeps of a refused handshake's body
		// into memory: closing it cannot fail.
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			return fmt.Errorf("http %d", resp.StatusCode)
		}
	}
	return errors.New(errorClass(err))
}

// hold reads conn until it ends: the server closes it, life passes (the
// tool closes it, abruptly or not), the dropper drops it (reconnect), or
// the pool stops. The caller counted conn in p.open; hold uncounts it.
func (p *pool) hold(slot, gen int32, conn *websocket.Conn, life time.Duration, abrupt bool, run *connRun, rnd *rand.Rand) {
	defer p.open.Add(-1)
	p.rep.emit(event{kind: evUp, slot: slot, gen: gen, at: run.up, t2: run.dial, flags: flagIf(run.since, flagSince), text: run.node})
	if !run.since {
		p.setSteady(slot, true) // with since, once {"recovered"} came
	}

	// The closers run on timer goroutines and only write the close frame
	// (or drop the socket); the read loop below then ends. Each signals
	// when it has run, so that hold returns only after them.
	var by atomic.Int32 // closeReason+1 of the first closer, 0: the server
	// closedAt is when the tool began to close (for a drop: dropped the
	// socket): from then on the server may unregister the connection, so
	// that is its end for the checks (the close handshake takes a while
	// longer).
	var closedAt atomic.Int64
	var once sync.Once
	closer := func(reason closeReason, drop bool) {
		once.Do(func() {
			defer close(run.dead)
			by.Store(int32(reason) + 1)
			closedAt.Store(time.Now().UnixNano())
			if drop {
				// A peer that vanishes without a close frame.
				_ = conn.NetConn().Close() // the read loop reports the end
				return
			}
			// An error means the socket is gone: the read loop ends anyway.
			_ = conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeWait))
			_ = conn.SetReadDeadline(time.Now().Add(2 * closeWait))
		})
	}
	var timer *time.Timer
	timerRan := make(chan struct{})
	if life > 0 {
		timer = time.AfterFunc(life, func() { defer close(timerRan); closer(closedByChurn, abrupt) })
	}
	quit := make(chan struct{}) // the read loop ended
	var dropperDone chan struct{}
	if p.reconnect {
		dropperDone = make(chan struct{})
		seed := rnd.Uint64()
		go func() {
			defer close(dropperDone)
			p.dropper(slot, run, seed, quit, func() { closer(closedByChurn, true) })
		}()
	}
	stopRan := make(chan struct{})
	stopAfter := context.AfterFunc(p.ctx, func() { defer close(stopRan); closer(closedByStop, false) })

	var code int
	var text string
	switch {
	case p.reconnect:
		code, text = p.readJSON(slot, gen, conn, run)
	case p.r.e.centrifugo():
		code, text = p.readCentrifugo(slot, gen, conn, run.hello)
	default:
		code, text = p.read(slot, gen, conn)
	}
	ended := time.Now().UnixNano()
	// A closer that fires from now on finds the once spent: the end is
	// the server's (or the network's) when no closer ran before it.
	once.Do(func() {})
	close(quit)

	if timer != nil && !timer.Stop() {
		<-timerRan
	}
	if dropperDone != nil {
		<-dropperDone
	}
	if !stopAfter() {
		<-stopRan
	}
	_ = conn.Close() // the connection is over either way
	reason := closedByServer
	if b := by.Load(); b != 0 {
		reason = closeReason(b - 1)
	}
	down := closedAt.Load()
	if down == 0 {
		down = ended
	}
	p.rep.emit(event{kind: evDown, slot: slot, gen: gen, at: down, reason: reason, code: int32(code), text: text})
}

// read reads messages until the connection ends, and returns the close
// code the server sent (0: none) or else the class of the error.
func (p *pool) read(slot, gen int32, conn *websocket.Conn) (int, string) {
	var head [maxHeader + 1]byte
	size := p.r.e.Size
	for {
		_, rd, err := conn.NextReader()
		if err != nil {
			return closeOf(err)
		}
		at := time.Now().UnixNano()
		n, err := io.ReadFull(rd, head[:])
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// Shorter than a header. A connection that died mid-message
			// fails again below: gorilla repeats a read error.
			err = nil
		}
		var rest int64
		if err == nil {
			rest, err = io.Copy(io.Discard, rd)
		}
		if err != nil {
			return closeOf(err)
		}
		p.r.recv.Add(1)
		sender, seq, sentAt, hlen, ok := parsePayload(head[:n])
		if !ok || n+int(rest) != max(size, hlen) {
			p.rep.emit(event{kind: evBad, slot: slot, gen: gen, at: at, text: string(head[:n])})
			continue
		}
		p.rep.emit(event{kind: evRecv, slot: slot, gen: gen, sender: sender, seq: seq, at: at, t2: sentAt})
	}
}

// closeOf returns the close code of a read error, or 0 and its class.
func closeOf(err error) (int, string) {
	if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
		return ce.Code, ""
	}
	return 0, errorClass(err)
}
