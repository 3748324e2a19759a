package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"
)

// quietPeriod is how long nothing must arrive, with nothing pending on
// the server, before a drain gives up on the messages still owed.
const quietPeriod = 500 * time.Millisecond

// session is one reporter and the pool that feeds it, torn down in that
// order's reverse: connections first, so the reporter gets their last
// events, then the reporter.
type session struct {
	rp     *reporter
	p      *pool
	closed bool
}

func (r *runner) open() (*session, error) {
	rp := newReporter(r.e.Users, r.e.ConnsPerUser, r.e.Senders, r.e.Scenario == scenarioReconnect)
	p, err := newPool(r, rp)
	if err != nil {
		return nil, err
	}
	rp.start()
	return &session{rp: rp, p: p}, nil
}

// close stops every connection, then the reporter. Senders must have
// returned before. It may be called again.
func (s *session) close() {
	if s.closed {
		return
	}
	s.closed = true
	s.p.stop()
	s.rp.stop()
}

// begin reads the server's state before a scenario and opens its
// connection set, which the caller closes.
func (r *runner) begin(ctx context.Context) (*Report, serverState, *session, error) {
	rep := r.newReport()
	base, err := r.probe.read(ctx)
	if err != nil {
		return nil, base, nil, err
	}
	s, err := r.open()
	if err != nil {
		return nil, base, nil, err
	}
	return rep, base, s, nil
}

// measureFrom connects the set (see connect), then takes the server's
// state and the CPU clocks where the measured part of a scenario begins.
func (r *runner) measureFrom(ctx context.Context, s *session, base serverState, confirm bool, rep *Report) (serverState, cpuClock, error) {
	if err := r.connect(ctx, s, base, confirm, rep); err != nil {
		return serverState{}, cpuClock{}, err
	}
	before, err := r.probe.read(ctx)
	return before, readCPUClock(), err
}

// measureTo ends the measured part of a scenario: it waits for the
// deliveries (see drain), takes the server's state and the CPU clocks,
// closes the set and reports what it saw and what it cost since
// measureFrom.
func (r *runner) measureTo(ctx context.Context, s *session, useExpect bool, when string, before serverState, clk0 cpuClock, rep *Report) {
	r.drain(ctx, useExpect)
	after, ok := r.state(ctx, rep, when)
	clk1 := readCPUClock()
	s.close()
	r.summarize(rep, s)
	if ok {
		r.cost(rep, before, after, clk0, clk1)
	}
}

func (r *runner) newReport() *Report {
	e := r.e
	rep := &Report{
		Scenario: e.Scenario, Label: e.Label, Target: e.Target, Users: e.Users, ConnsPerUser: e.ConnsPerUser,
		CPUs: runtime.NumCPU(), LoadAvg: loadAverage(),
	}
	if e.Scenario != scenarioIdle {
		rep.Senders, rep.Size = e.Senders, e.Size
	}
	if e.Scenario == scenarioMulticast {
		rep.MulticastSize = r.multicastSize()
	}
	if e.batched() {
		rep.BatchItems = e.BatchItems
	}
	if e.Scenario == scenarioRetry {
		rep.KeyPrefix = r.keyPrefix
	}
	return rep
}

func (r *runner) multicastSize() int {
	if r.e.MulticastSize == 0 {
		return r.e.Users
	}
	return r.e.MulticastSize
}

// connect opens every slot and waits until each made its first handshake;
// with confirm, also until the server's connections gauge counts them.
func (r *runner) connect(ctx context.Context, s *session, base serverState, confirm bool, rep *Report) error {
	start := time.Now()
	s.p.start(0, r.slots())
	cctx, cancel := context.WithTimeout(ctx, r.e.ConnectTimeout)
	defer cancel()
	if !s.p.waitFirstDials(cctx) {
		return fmt.Errorf("connect: %d of %d handshakes done when -connect-timeout %s passed", s.p.connected.Load(), r.slots(), r.e.ConnectTimeout)
	}
	n := s.p.connected.Load()
	rep.Connected = int(n)
	if n == 0 {
		return fmt.Errorf("connect: no handshake succeeded (see dial errors)")
	}
	if d := time.Duration(s.p.lastUp.Load() - start.UnixNano()); d > 0 {
		rep.UpgradesPerSec = float64(n) / d.Seconds()
	}
	if !confirm {
		return nil
	}
	if r.e.centrifugo() {
		// Each first dial ended with its connect reply, which Centrifugo
		// sends once the client is registered and subscribed; its gauge
		// is refreshed every 10 s only.
		rep.ConfirmedPerSec = rep.UpgradesPerSec
		return nil
	}
	var seen, open float64
	ok := waitUntil(cctx, r.e.ConnectTimeout, 20*time.Millisecond, func() bool {
		if open = float64(s.p.open.Load()); open == 0 {
			return true // nothing left for the gauge to count
		}
		st, err := r.probe.read(cctx)
		seen = st.Connections
		return err == nil && st.Connections >= base.Connections+open
	})
	switch {
	case open == 0:
		return errors.New("connect: the server closed every connection after the handshake (see closed by server and first malformed)")
	case !ok:
		return fmt.Errorf("connect: the server counts %.0f connections, want %.0f: some upgraded connections were never registered",
			seen-base.Connections, open)
	}
	rep.ConfirmedPerSec = float64(n) / time.Since(start).Seconds()
	return nil
}

// idle opens the connections, holds them for Settle and reports what they
// cost the server.
func (r *runner) idle(ctx context.Context) (*Report, error) {
	rep, base, s, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := r.connect(ctx, s, base, true, rep); err != nil {
		return r.abort(rep, s, err)
	}
	sleep(ctx, r.e.Settle)
	held, err := r.probe.read(ctx)
	if err != nil {
		return r.abort(rep, s, err)
	}
	if n := float64(s.p.open.Load()); n > 0 {
		rep.RSSPerConn = float64(held.RSS-base.RSS) / n
		rep.HeapPerConn = (held.HeapInuse - base.HeapInuse) / n
		rep.GoroutinesPerConn = (held.Goroutines - base.Goroutines) / n
	}
	rep.Before, rep.After = &base, &held
	s.close()
	r.summarize(rep, s)
	// The connections must leave the server when they close.
	var last serverState
	if !waitUntil(ctx, r.e.SettleTimeout, 50*time.Millisecond, func() bool {
		st, err := r.probe.read(ctx)
		last = st
		return err == nil && st.Connections <= base.Connections
	}) {
		rep.problem("the server still counts %.0f connections %s after they closed (baseline %.0f)", last.Connections, r.e.SettleTimeout, base.Connections)
	}
	return rep, nil
}

// send pushes Messages unicasts (send; batch in /send/batch requests;
// retry with keys and retries) or Rounds multicasts (multicast) to
// connections held for the whole run, and checks every delivery.
func (r *runner) send(ctx context.Context) (*Report, error) {
	rep, base, s, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer s.close()
	before, clk0, err := r.measureFrom(ctx, s, base, true, rep)
	if err != nil {
		return r.abort(rep, s, err)
	}
	switch r.e.Scenario {
	case scenarioMulticast:
		k := r.multicastSize()
		err = r.runSenders(ctx, ctx, s.rp, r.e.Rounds, pushTo(func(n int) (int, int) { return n * k % r.e.Users, k }))
	case scenarioBatch:
		err = r.runSenders(ctx, ctx, s.rp, r.e.itemRequests(), r.batchRequest)
	case scenarioRetry:
		err = r.runSenders(ctx, ctx, s.rp, r.e.itemRequests(), r.retryRequest)
	default:
		err = r.runSenders(ctx, ctx, s.rp, r.e.Messages, r.unicasts())
	}
	if err != nil {
		rep.problem("%v", err)
	}
	r.postFigures(rep)
	r.measureTo(ctx, s, true, "after the sends", before, clk0, rep)
	return rep, nil
}

// churn keeps a share of the connections closing and redialing while
// unicasts go on for Duration, then checks that what was open across a
// send got it, and that the server returns to its baseline.
func (r *runner) churn(ctx context.Context) (*Report, error) {
	e := r.e
	rep, base, s, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer s.close()
	rep.Before = &base
	churning := int32(float64(r.slots()) * e.ChurnFraction)
	s.p.lifetime = func(slot int32, rnd *rand.Rand) (time.Duration, bool) {
		if slot >= churning {
			return 0, false
		}
		// Uniform in [L/2, 3L/2): mean L, and never zero (zero is "hold").
		life := e.ChurnLifetime/2 + time.Duration(rnd.Int64N(int64(e.ChurnLifetime)))
		return life, rnd.Float64() < e.ChurnAbrupt
	}
	s.p.redial.Store(true)
	// Churning connections come and go, so the gauge cannot confirm them.
	before, clk0, err := r.measureFrom(ctx, s, base, false, rep)
	if err != nil {
		return r.abort(rep, s, err)
	}
	churnCtx, cancel := context.WithTimeout(ctx, e.Duration)
	defer cancel()
	// Requests run under ctx, so the last ones finish after Duration.
	if err := r.runSenders(churnCtx, ctx, s.rp, e.Messages, r.unicasts()); err != nil {
		rep.problem("%v", err)
		cancel()
	}
	<-churnCtx.Done() // Messages may run out first; the churn goes on for Duration
	s.p.redial.Store(false)
	r.measureTo(ctx, s, false, "after the churn", before, clk0, rep)
	r.backToBaseline(ctx, rep, base)
	return rep, nil
}

// backToBaseline is the leak check of churn and reconnect: with every
// connection and keep-alive closed, the server must return to where it
// started (base) within SettleTimeout. It sets rep.After.
func (r *runner) backToBaseline(ctx context.Context, rep *Report, base serverState) {
	e := r.e
	r.http.CloseIdleConnections()
	sleep(ctx, e.Settle)
	var last serverState
	back := waitUntil(ctx, e.SettleTimeout, 100*time.Millisecond, func() bool {
		st, err := r.probe.read(ctx)
		last = st
		return err == nil && st.Connections <= base.Connections && st.Users <= base.Users && st.Pending == 0 &&
			st.Goroutines <= base.Goroutines+float64(e.GoroutineSlack)
	})
	rep.After = &last
	if !back {
		rep.problem("the server did not return to its baseline within %s: connections %.0f (was %.0f), users %.0f (was %.0f), pending %.0f, goroutines %.0f (was %.0f, slack %d)",
			e.SettleTimeout, last.Connections, base.Connections, last.Users, base.Users, last.Pending, last.Goroutines, base.Goroutines, e.GoroutineSlack)
	}
}

// giveUpAfter is how many /send requests in a row may go unanswered
// before a sender decides the server is gone and stops every sender.
const giveUpAfter = 20

// request makes request n (counted over all senders) with sender s under
// ctx, reports what came of it, and returns the answer's status, or 0 and
// the class of the error when there was none.
type request func(ctx context.Context, s *sender, n int) (int, string)

// pushTo is the request of send, multicast, churn and reconnect: one
// /send to target(n), its first user and how many.
func pushTo(target func(n int) (first, count int)) request {
	return func(ctx context.Context, s *sender, n int) (int, string) {
		first, count := target(n)
		return s.send(ctx, first, count)
	}
}

// unicasts is pushTo with request n a unicast to user n mod Users.
func (r *runner) unicasts() request {
	return pushTo(func(n int) (int, int) { return n % r.e.Users, 1 })
}

// runSenders runs Senders senders until total requests are done or stop
// ends; each request runs under reqCtx. It returns why the senders gave
// up early, or nil.
func (r *runner) runSenders(stop, reqCtx context.Context, rp *reporter, total int, do request) error {
	stop, giveUp := context.WithCancelCause(stop)
	defer giveUp(nil)
	var wg sync.WaitGroup
	pace := pacer{start: time.Now(), rate: r.e.Rate}
	c := r.e.Senders
	for i := range c {
		s, err := r.newSender(rp, i)
		if err != nil {
			giveUp(err)
			break
		}
		wg.Go(func() {
			defer s.close()
			failures := 0
			for n := i; n < total && pace.wait(stop, n); n += c {
				if code, errClass := do(reqCtx, s, n); code != 0 {
					failures = 0
				} else if failures++; failures >= giveUpAfter {
					giveUp(fmt.Errorf("sender %d: %d requests in a row got no answer (%s): stopped sending", i, failures, errClass))
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(stop); stop.Err() != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// drain waits for the messages in flight: until the server has nothing
// pending and nothing arrived for quietPeriod (messages still owed then
// are lost), or, with useExpect, for only settlePeriod once the receivers
// read as many messages as the 2xx answers owe (a duplicate counts there
// too, so the count alone does not prove every message came). Drain
// bounds it.
func (r *runner) drain(ctx context.Context, useExpect bool) {
	const settlePeriod = 50 * time.Millisecond
	last, lastChange := r.recv.Load(), time.Now()
	var pending float64 = 1
	nextProbe := time.Now()
	waitUntil(ctx, r.e.Drain, 5*time.Millisecond, func() bool {
		if n := r.recv.Load(); n != last {
			last, lastChange = n, time.Now()
		}
		if time.Now().After(nextProbe) {
			nextProbe = time.Now().Add(settlePeriod)
			if st, err := r.probe.read(ctx); err == nil {
				pending = st.Pending
			}
		}
		quiet := time.Since(lastChange)
		return pending == 0 && (quiet > quietPeriod || useExpect && last >= r.expect.Load() && quiet > settlePeriod)
	})
}

// abort ends a run that cannot go on: the report so far, with err.
func (r *runner) abort(rep *Report, s *session, err error) (*Report, error) {
	s.close()
	r.summarize(rep, s)
	rep.problem("%v", err)
	return rep, err
}

// state reads the server after the run has started. A server that stopped
// answering is a finding for the report, not a reason to lose it.
func (r *runner) state(ctx context.Context, rep *Report, when string) (serverState, bool) {
	st, err := r.probe.read(ctx)
	if err != nil {
		rep.problem("%s: %v", when, err)
	}
	return st, err == nil
}

// summarize adds the reporter's figures to rep; s must be closed. Only
// churn (and reconnect, for a redial without since) needs RegisterGrace:
// the other scenarios send after the server's gauge counted every
// connection, so each is registered before any /send.
func (r *runner) summarize(rep *Report, s *session) {
	grace := time.Duration(0)
	if r.e.Scenario == scenarioChurn || r.e.Scenario == scenarioReconnect {
		grace = r.e.RegisterGrace
	}
	s.rp.summarize(rep, grace)
	rep.check()
}

// cost adds the CPU time and the server's counters between before and
// after.
func (r *runner) cost(rep *Report, before, after serverState, c0, c1 cpuClock) {
	rep.ServerCPU = after.CPUSeconds - before.CPUSeconds
	rep.ToolCPU = c1.tool - c0.tool
	if len(r.e.ServerPIDs) > 0 && c1.machine > 0 {
		// The server runs here: what is left of the machine's busy time
		// went to other work, which slows both.
		rep.OtherCPU = max(c1.machine-c0.machine-rep.ServerCPU-rep.ToolCPU, 0)
	}
	if rep.ServerCPU > 0 {
		rep.DeliveredPerCPUSec = float64(rep.Delivered) / rep.ServerCPU
	}
	rep.ServerSent = after.Sent - before.Sent
	rep.ServerFailed = after.Failed - before.Failed
	rep.SlowConsumers = after.SlowConsumers - before.SlowConsumers
}
