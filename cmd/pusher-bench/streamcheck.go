package main

import (
	"fmt"
	"time"
)

// streamState is what one slot received across its generations
// (reconnect): the messages, by sender and seq, and where its offset
// stands.
type streamState struct {
	seen map[uint64]streamRecv // sender<<32 | seq: where it came first
	last []int32               // by sender: highest seq received

	epoch   string // the offset of the latest message: epoch and n
	n       uint64
	known   bool   // false before the first message and after {"recovered": false}
	lastKey uint64 // the message at n

	// unrecoverable spans, one per {"recovered": false}: see excused.
	unrecoverable []unrecoverable
}

// streamRecv is where a slot received a message: which connection, at
// which offset, replayed or live.
type streamRecv struct {
	gen    int32
	replay bool
	off    uint64
}

func (w streamRecv) String() string {
	kind := "live"
	if w.replay {
		kind = "replayed"
	}
	return fmt.Sprintf("offset %d %s on connection %d", w.off, kind, w.gen)
}

// maxSamples bounds the duplicates and gaps the report describes.
const maxSamples = 5

// unrecoverable is what a {"recovered": false} gives up: the messages
// whose offsets come after the slot's position at the drop (the message
// lo, when known) and were given before the new connection registered
// (before hi, when the frame came).
type unrecoverable struct {
	lo    uint64 // sender<<32 | seq of the message the position was at
	hasLo bool
	hi    int64
}

func (r *reporter) stream(slot int32) *streamState {
	st := r.streams[slot]
	if st == nil {
		st = &streamState{seen: map[uint64]streamRecv{}, last: make([]int32, r.senders)}
		r.streams[slot] = st
	}
	return st
}

func (r *reporter) gap(slot int32, format string, a ...any) {
	if len(r.gapSamples) < maxSamples {
		r.gapSamples = append(r.gapSamples, fmt.Sprintf("slot %d: ", slot)+fmt.Sprintf(format, a...))
	}
}

// recvStream checks a message against its slot's stream: its offset must
// follow the last one (after a drop too: the redial asked for everything
// after it), and its payload must be new.
func (r *reporter) recvStream(ev event) {
	st := r.stream(ev.slot)
	cs := r.slots[ev.slot][ev.gen]
	key := uint64(ev.sender)<<32 | uint64(uint32(ev.seq))
	here := streamRecv{gen: ev.gen, replay: ev.flags&flagReplay != 0, off: ev.off}
	first, dup := st.seen[key]
	misordered := false
	if st.known {
		switch {
		case ev.text != st.epoch:
			r.gaps++
			r.gap(ev.slot, "epoch %s after %s:%d without {\"recovered\": false}", ev.text, st.epoch, st.n)
		case ev.off > st.n+1:
			r.gaps += int(ev.off - st.n - 1)
			r.gap(ev.slot, "offset %s:%d after %s:%d (connection %d)", ev.text, ev.off, st.epoch, st.n, ev.gen)
		case ev.off <= st.n && !dup:
			// An older offset carrying a message not seen before.
			r.outOfOrder++
			misordered = true
		}
	}
	if !st.known || ev.text != st.epoch || ev.off > st.n {
		st.epoch, st.n, st.known, st.lastKey = ev.text, ev.off, true, key
	}
	if dup {
		r.duplicates++
		if len(r.dupSamples) < maxSamples {
			replay := ""
			if cs.replayed > 0 {
				replay = fmt.Sprintf("; that connection's replay: %d messages up to offset %d", cs.replayed, cs.lastOff)
			}
			node := ""
			if cs.node != "" {
				node = " on " + cs.node
			}
			r.dupSamples = append(r.dupSamples, fmt.Sprintf("slot %d: s%d:%d at %s:%d, first at %s; again at %s%s, %d ms after the dial%s",
				ev.slot, ev.sender, ev.seq, ev.text, ev.off, first, here, node, (ev.at-cs.dial)/1e6, replay))
		}
		return
	}
	st.seen[key] = here
	r.received++
	if ev.seq < st.last[ev.sender] {
		if !misordered {
			r.outOfOrder++
		}
	} else {
		st.last[ev.sender] = ev.seq
	}
	if ev.flags&flagReplay != 0 {
		r.replayed++
		cs.replayed++
		cs.lastOff = ev.off
	} else {
		r.latencies = append(r.latencies, ev.at-ev.t2)
	}
	r.lastRecv = max(r.lastRecv, ev.at)
}

// recoveredFrame handles {"recovered": ...}: once per connection dialled
// with since, after the replay. From it on the server surely has the
// connection registered.
func (r *reporter) recoveredFrame(ev event) {
	cs := r.slots[ev.slot][ev.gen]
	ok := ev.code == 1
	switch {
	case !cs.since:
		r.bad(fmt.Sprintf("{\"recovered\": %v} on a connection without since=", ok))
		return
	case cs.recovered != 0:
		r.bad(fmt.Sprintf("a second {\"recovered\": %v} on one connection", ok))
		return
	case !ok && cs.replayed > 0:
		r.bad(fmt.Sprintf("{\"recovered\": false} after %d replayed messages", cs.replayed))
	}
	cs.reg = ev.at
	r.replayLatencies = append(r.replayLatencies, ev.at-ev.t2)
	if ok {
		cs.recovered = 1
		r.recoveredTrue++
		return
	}
	cs.recovered = -1
	r.recoveredFalse++
	st := r.stream(ev.slot)
	st.unrecoverable = append(st.unrecoverable, unrecoverable{lo: st.lastKey, hasLo: st.known, hi: ev.at})
	st.known = false
}

// summarizeStreams fills rep's figures of a reconnect run. Every accepted
// message is owed to every slot of its uid that was registered when it
// was sent, across that slot's connections: what did not come is lost,
// unless a {"recovered": false} gave it up. A 404 is expected when some
// moment of the request found no connection of the uid registered;
// otherwise it is a wrong answer.
func (r *reporter) summarizeStreams(rep *Report, grace time.Duration) {
	rep.Gaps, rep.GapSamples, rep.DuplicateSamples = r.gaps, r.gapSamples, r.dupSamples
	rep.RecoveredTrue, rep.RecoveredFalse, rep.Replayed = r.recoveredTrue, r.recoveredFalse, r.replayed
	rep.ReplayLatency = latencyOf(r.replayLatencies)
	for _, gens := range r.slots {
		for i, cs := range gens {
			if cs.since {
				rep.Reconnects++
			}
			if cs.reason == closedByChurn {
				rep.Drops++
			}
			if cs.since && cs.recovered == 0 && cs.reason == closedByStop {
				rep.MissingRecovered++
			}
			if i > 0 && !cs.since {
				cs.reg += int64(grace) // the server registers after the upgrade
			}
		}
	}
	issued := func(key uint64) (int64, bool) {
		s, seq := int(key>>32), int(uint32(key))
		if s >= len(r.sent) || seq < 1 || seq > len(r.sent[s]) || r.sent[s][seq-1].at == 0 {
			return 0, false
		}
		return r.sent[s][seq-1].at, true
	}
	for s, recs := range r.sent {
		for i, rec := range recs {
			key := uint64(s)<<32 | uint64(i+1)
			switch {
			case rec.code/100 == 2:
				r.eachSlot(rec, func(slot int) {
					gens := r.slots[slot]
					if len(gens) == 0 || gens[0].reg == 0 || gens[0].reg > rec.at {
						return // not registered yet when it was sent
					}
					rep.Expected++
					st := r.streams[slot]
					if st != nil {
						if _, ok := st.seen[key]; ok {
							return
						}
						for _, u := range st.unrecoverable {
							lo, ok := issued(u.lo)
							if (!u.hasLo || !ok || rec.answered > lo) && rec.at < u.hi {
								rep.Unrecoverable++
								return
							}
						}
					}
					rep.Lost++
				})
			case rec.code == 404:
				wrong := false
				r.eachSlot(rec, func(slot int) {
					for _, cs := range r.slots[slot] {
						if cs.reg != 0 && cs.reg <= rec.at && (cs.down == 0 || cs.down > rec.answered) {
							wrong = true
						}
					}
				})
				if wrong {
					rep.NotFoundWhileOpen++
				} else {
					rep.ExpectedNotFound++
				}
			}
		}
	}
}

// eachSlot calls f for every slot of rec's uids.
func (r *reporter) eachSlot(rec sentRec, f func(slot int)) {
	for j := range int(rec.count) {
		u := (int(rec.first) + j) % r.users
		for k := range r.connsPerUser {
			f(u*r.connsPerUser + k)
		}
	}
}
