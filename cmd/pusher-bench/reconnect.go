package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// The reconnect scenario: every connection asks for format=json, so each
// message comes with its offset "<epoch>:<n>"; the slot keeps the last
// one it read. Connections drop at random moments (the socket closed
// without a close frame, after the reader stalled a while so that
// messages were in flight) and the slot redials with ?since= its last
// offset: the server replays what the slot missed, then sends
// {"recovered": true}, then the live stream. The reporter checks that
// every accepted message reached the slot exactly once, in offset order,
// across its connections.

// The phases of the drops.
const (
	phaseBefore   int32 = iota // connecting: no drops yet
	phaseDropping              // drops happen
	phaseDone                  // no new drops; the dropped come back
)

// streamPos is the last offset a slot read. Only the slot's goroutine
// uses it.
type streamPos struct {
	epoch string
	n     uint64
	known bool
}

func (p streamPos) String() string { return p.epoch + ":" + strconv.FormatUint(p.n, 10) }

// connRun is what one connection of a slot shares between its reader,
// its closers and its dropper.
type connRun struct {
	since     bool          // dialled with ?since=
	node      string        // host:port of the node, when there are several
	dial      int64         // unix ns when the handshake began
	up        int64         // unix ns when it was done
	pos       *streamPos    // the slot's, updated by the reader
	recovered bool          // the reader saw {"recovered": ...}
	canDrop   atomic.Bool   // the slot knows its offset: a drop can come back with since=
	stalled   atomic.Bool   // the dropper began: the reader reads nothing more
	dead      chan struct{} // closed once a closer has run
	hello     cfHello       // Centrifugo: what the connect reply said
}

// wireFrame is a format=json frame: a message, or the recovered flag.
type wireFrame struct {
	ID        string `json:"id"`
	Offset    string `json:"offset"`
	Message   string `json:"message"`
	Recovered *bool  `json:"recovered"`
}

// parseOffset reads "<epoch>:<n>".
func parseOffset(s string) (epoch string, n uint64, ok bool) {
	epoch, v, found := strings.Cut(s, ":")
	if !found || epoch == "" {
		return "", 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return epoch, n, err == nil
}

// setSteady marks slot as steady (connected and, when it asked for a
// replay, recovered) or not, and keeps unsettled in step.
func (p *pool) setSteady(slot int32, v bool) {
	if p.steady[slot].CompareAndSwap(!v, v) {
		if v {
			p.unsettled.Add(-1)
		} else {
			p.unsettled.Add(1)
		}
	}
}

// dropper drops the connection of run after a random time (exponential,
// mean DropInterval; it draws again while drops are not on yet or the
// slot has no offset to come back with): it stalls the reader for up to
// DropStall, then calls drop. It returns when quit closes (the
// connection ended otherwise) or after the drop.
func (p *pool) dropper(slot int32, run *connRun, seed uint64, quit <-chan struct{}, drop func()) {
	e := p.r.e
	rnd := rand.New(rand.NewPCG(seed, uint64(slot)))
	next := func() time.Duration { return time.Duration(rnd.ExpFloat64() * float64(e.DropInterval)) }
	t := time.NewTimer(next())
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
		}
		if run.canDrop.Load() {
			// Counted before the phase is read: the scenario reads the
			// count after it ended the phase, so it sees this drop.
			p.dropping.Add(1)
			if p.phase.Load() == phaseDropping {
				p.setSteady(slot, false)
				p.dropping.Add(-1)
				run.stalled.Store(true)
				if e.DropStall > 0 {
					t.Reset(time.Duration(rnd.Int64N(int64(e.DropStall))))
					select {
					case <-quit:
						return
					case <-t.C:
					}
				}
				drop()
				return
			}
			p.dropping.Add(-1)
		}
		if p.phase.Load() == phaseDone {
			return
		}
		t.Reset(next())
	}
}

// readJSON reads format=json frames until the connection ends, keeps the
// slot's offset, and returns the close code the server sent (0: none) or
// else the class of the error.
func (p *pool) readJSON(slot, gen int32, conn *websocket.Conn, run *connRun) (int, string) {
	var buf bytes.Buffer
	size := p.r.e.Size
	limit := int64(max(size, maxHeader)) + 4096 // id, offset and quoting
	pos := run.pos
	for {
		_, rd, err := conn.NextReader()
		if err != nil {
			return closeOf(err)
		}
		if run.stalled.Load() {
			// The drop has begun: what comes now is never read. The frame
			// just begun is lost with the socket.
			<-run.dead
			return 0, ""
		}
		at := time.Now().UnixNano()
		buf.Reset()
		if _, err := buf.ReadFrom(io.LimitReader(rd, limit)); err != nil {
			return closeOf(err)
		}
		if _, err := io.Copy(io.Discard, rd); err != nil {
			return closeOf(err)
		}
		p.r.recv.Add(1)
		var f wireFrame
		bad := func() {
			head := buf.Bytes()
			p.rep.emit(event{kind: evBad, slot: slot, gen: gen, at: at, text: string(head[:min(len(head), 120)])})
		}
		if err := json.Unmarshal(buf.Bytes(), &f); err != nil {
			bad()
			continue
		}
		if f.Recovered != nil {
			if f.ID != "" || f.Offset != "" || f.Message != "" {
				bad()
				continue
			}
			p.rep.emit(event{kind: evRecovered, slot: slot, gen: gen, at: at, t2: run.dial, code: int32(flagIf(*f.Recovered, 1))})
			if !*f.Recovered {
				// The offset says nothing any more; the next message's will.
				pos.known = false
				run.canDrop.Store(false)
			}
			if run.since && !run.recovered {
				p.setSteady(slot, true)
			}
			run.recovered = true
			continue
		}
		epoch, n, ok := parseOffset(f.Offset)
		sender, seq, sentAt, hlen, pok := parsePayload([]byte(f.Message))
		if !ok || !pok || f.ID == "" || len(f.Message) != max(size, hlen) {
			bad()
			continue
		}
		if pos.known && epoch == pos.epoch {
			epoch = pos.epoch // one string per epoch, not per message
		}
		if !pos.known || epoch != pos.epoch || n > pos.n {
			pos.epoch, pos.n, pos.known = epoch, n, true
			run.canDrop.Store(true)
		}
		p.rep.emit(event{
			kind: evRecv, slot: slot, gen: gen, sender: sender, seq: seq, at: at, t2: sentAt,
			off: n, text: epoch, flags: flagIf(run.since && !run.recovered, flagReplay),
		})
	}
}

// reconnect holds a connection per slot with format=json and, for
// Duration, drops them at random moments while unicasts go on; the slots
// redial with ?since=. Then it waits until every slot is back and
// recovered, drains, and checks that every accepted message reached its
// slot once, in order, and that the server returns to its baseline.
func (r *runner) reconnect(ctx context.Context) (*Report, error) {
	e := r.e
	rep, base, s, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer s.close()
	rep.Before = &base
	s.p.reconnect = true
	s.p.redial.Store(true)
	// Every first connection is registered before the first /send: it is
	// owed every accepted message of its uid from the start.
	before, clk0, err := r.measureFrom(ctx, s, base, true, rep)
	if err != nil {
		return r.abort(rep, s, err)
	}
	s.p.phase.Store(phaseDropping)
	dropCtx, cancel := context.WithTimeout(ctx, e.Duration)
	defer cancel()
	if err := r.runSenders(dropCtx, ctx, s.rp, e.Messages, r.unicasts()); err != nil {
		rep.problem("%v", err)
		cancel()
	}
	<-dropCtx.Done()
	// No new drops; the slots that dropped come back and catch up.
	s.p.phase.Store(phaseDone)
	if !waitUntil(ctx, e.ConnectTimeout, 10*time.Millisecond, func() bool {
		return s.p.dropping.Load() == 0 && s.p.unsettled.Load() == 0
	}) {
		rep.problem("%d clients had not reconnected with a {\"recovered\"} frame %s after the drops ended", s.p.unsettled.Load(), e.ConnectTimeout)
	}
	r.measureTo(ctx, s, false, "after the drops", before, clk0, rep)
	r.backToBaseline(ctx, rep, base)
	return rep, nil
}
