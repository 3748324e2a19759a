package main

import (
	"fmt"
	"slices"
	"strconv"
	"time"
)

// eventKind says what an event reports.
type eventKind uint8

const (
	evUp        eventKind = iota + 1 // a connection of a slot opened (handshake done)
	evDown                           // it ended
	evDialError                      // a handshake failed
	evRecv                           // a message arrived
	evBad                            // a message arrived that the tool did not send
	evSent                           // a /send was answered (or failed); batch, retry: one message of a request
	evRecovered                      // {"recovered": ...} arrived (reconnect): code 1 true, 0 false
)

// Event flags.
const (
	flagSince     uint8 = 1 << iota // evUp: the connection was dialled with ?since=
	flagReplay                      // evRecv: it came before {"recovered": true}: a replay
	flagMaybeSent                   // evSent (retry): a try without an answer came before the final non-2xx, so it may have gone out
)

func flagIf(cond bool, f uint8) uint8 {
	if cond {
		return f
	}
	return 0
}

// closeReason says who ended a connection.
type closeReason uint8

const (
	closedByServer closeReason = iota // the server closed it, or the network failed
	closedByChurn                     // the tool closed it during the run (churn)
	closedByStop                      // the tool closed it at the end of the run
)

// event is one thing that happened, sent by receivers and senders to the
// reporter. One flat value type, so that sending it allocates nothing.
type event struct {
	kind   eventKind
	flags  uint8
	reason closeReason // evDown
	slot   int32       // evUp, evDown, evRecv, evBad
	gen    int32       // which of the slot's connections, from 0
	sender int32       // evRecv, evSent
	seq    int32       // evRecv, evSent
	first  int32       // evSent: first target user
	count  int32       // evSent: number of target users (1: a unicast)
	code   int32       // evSent: HTTP status, 0 without an answer; evDown: close code
	off    uint64      // evRecv with format=json: the offset's n
	at     int64       // unix ns: when it happened; evSent: when the /send was issued
	t2     int64       // evRecv: the send time in the message; evSent: when the answer came; evUp, evRecovered: when the dial began
	text   string      // an error's class, or the head of a malformed message; evRecv with format=json: the offset's epoch
}

// reporterBuffer bounds the events in flight. A receiver blocks when it is
// full, which slows its reads; the reporter's work per event is a few map
// operations, so it only fills when the machine is saturated anyway.
const reporterBuffer = 8192

// reporter is the one goroutine that owns the bookkeeping: which
// connection got which message, what each /send answered. Receivers and
// senders feed it through a bounded channel; summarize reads the result
// after stop.
type reporter struct {
	events chan event
	done   chan struct{}

	users, connsPerUser, senders int

	slots   [][]*connState // by slot, then generation
	streams []*streamState // reconnect: by slot, what it received across its generations; nil otherwise
	sent    [][]sentRec    // by sender, then seq-1

	latencies  []int64 // ns, one per first receipt
	dialErrors map[string]int
	closes     map[string]int // connections the server ended, by close code or error
	status     map[string]int // /send answers that were not 2xx
	sendErrors map[string]int // /send without an answer, by error class

	requests, accepted, received, duplicates, outOfOrder, malformed int
	firstMalformed                                                  string
	firstIssued, lastAnswered, lastRecv                             int64

	// reconnect
	gaps, recoveredTrue, recoveredFalse, replayed int
	gapSamples, dupSamples                        []string
	replayLatencies                               []int64 // ns, dial start to {"recovered"}
}

// connState is what one connection received.
type connState struct {
	up, down int64
	reason   closeReason
	last     []int32             // by sender: highest seq received
	seen     map[uint64]struct{} // sender<<32 | seq

	// reconnect
	since     bool   // dialled with ?since=
	dial      int64  // when the handshake began
	reg       int64  // the server surely had it registered from then on (0: never known)
	recovered int8   // {"recovered": true} 1, false -1, none 0
	replayed  int    // messages before {"recovered"}
	lastOff   uint64 // the offset of the last of them
	node      string // the node it was dialled to, when there are several
}

// sentRec is one answered /send.
type sentRec struct {
	first, count int32
	code         int32
	at, answered int64
	maybe        bool // flagMaybeSent
}

// newReporter returns a reporter; with streams (reconnect) it checks
// each slot's stream across its generations, by offset.
func newReporter(users, connsPerUser, senders int, streams bool) *reporter {
	r := &reporter{
		events:       make(chan event, reporterBuffer),
		done:         make(chan struct{}),
		users:        users,
		connsPerUser: connsPerUser,
		senders:      senders,
		slots:        make([][]*connState, users*connsPerUser),
		sent:         make([][]sentRec, senders),
		dialErrors:   map[string]int{},
		closes:       map[string]int{},
		status:       map[string]int{},
		sendErrors:   map[string]int{},
	}
	if streams {
		r.streams = make([]*streamState, users*connsPerUser)
	}
	return r
}

// start runs the reporter; stop ends it.
func (r *reporter) start() { go r.loop() }

// emit hands ev to the reporter. The reporter runs until stop, which is
// called only after every sender and receiver has returned, so this
// never blocks for good.
func (r *reporter) emit(ev event) { r.events <- ev }

// stop waits until every event is handled. Call it after the last emit.
func (r *reporter) stop() {
	close(r.events)
	<-r.done
}

func (r *reporter) loop() {
	defer close(r.done)
	for ev := range r.events {
		r.handle(ev)
	}
}

func (r *reporter) handle(ev event) {
	switch ev.kind {
	case evUp:
		cs := &connState{up: ev.at, dial: ev.t2, since: ev.flags&flagSince != 0, node: ev.text}
		if !cs.since {
			cs.reg = ev.at
		}
		r.slots[ev.slot] = append(r.slots[ev.slot], cs)
	case evDown:
		cs := r.slots[ev.slot][ev.gen]
		cs.down, cs.reason = ev.at, ev.reason
		if ev.reason == closedByServer {
			k := ev.text
			if ev.code != 0 {
				k = strconv.Itoa(int(ev.code))
			}
			r.closes[k]++
		}
	case evDialError:
		r.dialErrors[ev.text]++
	case evBad:
		r.bad(ev.text)
	case evRecv:
		if ev.sender < 0 || int(ev.sender) >= r.senders {
			r.bad(fmt.Sprintf("s%d:%d: (no such sender)", ev.sender, ev.seq))
			return
		}
		if r.streams != nil {
			r.recvStream(ev)
			return
		}
		r.recv(r.slots[ev.slot][ev.gen], ev)
	case evRecovered:
		r.recoveredFrame(ev)
	case evSent:
		r.sentAnswer(ev)
	}
}

func (r *reporter) bad(text string) {
	r.malformed++
	if r.firstMalformed == "" {
		r.firstMalformed = text
	}
}

func (r *reporter) recv(cs *connState, ev event) {
	if cs.seen == nil {
		cs.seen = make(map[uint64]struct{})
		cs.last = make([]int32, r.senders)
	}
	key := uint64(ev.sender)<<32 | uint64(uint32(ev.seq))
	if _, dup := cs.seen[key]; dup {
		r.duplicates++
		return
	}
	cs.seen[key] = struct{}{}
	r.received++
	if ev.seq < cs.last[ev.sender] {
		r.outOfOrder++
	} else {
		cs.last[ev.sender] = ev.seq
	}
	r.latencies = append(r.latencies, ev.at-ev.t2)
	r.lastRecv = max(r.lastRecv, ev.at)
}

func (r *reporter) sentAnswer(ev event) {
	r.requests++
	switch {
	case ev.code == 0:
		r.sendErrors[ev.text]++
	case ev.code/100 == 2:
		r.accepted++
	default:
		r.status[strconv.Itoa(int(ev.code))]++
	}
	if r.firstIssued == 0 || ev.at < r.firstIssued {
		r.firstIssued = ev.at
	}
	r.lastAnswered = max(r.lastAnswered, ev.t2)
	recs := r.sent[ev.sender]
	for len(recs) < int(ev.seq) {
		recs = append(recs, sentRec{})
	}
	recs[ev.seq-1] = sentRec{first: ev.first, count: ev.count, code: ev.code, at: ev.at, answered: ev.t2, maybe: ev.flags&flagMaybeSent != 0}
	r.sent[ev.sender] = recs
}

// summarize fills rep's message figures. A connection is owed an accepted
// message when it had been open grace before the /send was issued and was
// not closed by the tool (churn) before the end; a connection the server
// closed is owed what it was sent before, so a slow-consumer close counts
// as loss. Call it after stop.
func (r *reporter) summarize(rep *Report, grace time.Duration) {
	rep.Requests, rep.Accepted, rep.Delivered = r.requests, r.accepted, r.received
	rep.Duplicates, rep.OutOfOrder, rep.Malformed = r.duplicates, r.outOfOrder, r.malformed
	rep.MalformedSample = r.firstMalformed
	rep.Status, rep.SendErrors, rep.DialErrors, rep.ServerCloses = nonEmpty(r.status), nonEmpty(r.sendErrors), nonEmpty(r.dialErrors), nonEmpty(r.closes)
	for _, gens := range r.slots {
		rep.Redials += max(len(gens)-1, 0)
	}
	rep.Latency = latencyOf(r.latencies)
	if r.firstIssued != 0 {
		if d := time.Duration(r.lastAnswered - r.firstIssued); d > 0 {
			rep.AcceptedPerSec = float64(r.accepted) / d.Seconds()
		}
		if d := time.Duration(r.lastRecv - r.firstIssued); d > 0 {
			rep.DeliveredPerSec = float64(r.received) / d.Seconds()
		}
	}
	rep.Unexpected = r.unexpected()
	if r.streams != nil {
		r.summarizeStreams(rep, grace)
		return
	}

	for s, recs := range r.sent {
		for i, rec := range recs {
			key := uint64(s)<<32 | uint64(i+1)
			switch {
			case rec.code/100 == 2:
				r.owed(rec, grace, false, func(cs *connState) {
					rep.Expected++
					if _, ok := cs.seen[key]; !ok {
						rep.Lost++
					}
				})
			case rec.code == 404:
				// "client not found" while a connection of the uid was
				// open across the whole request is a wrong answer, also
				// when churn closed that connection later: the server
				// sees a close only after the tool makes it.
				wrong := false
				r.owed(rec, grace, true, func(cs *connState) {
					wrong = wrong || cs.down == 0 || cs.down > rec.answered
				})
				if wrong {
					rep.NotFoundWhileOpen++
				}
			}
		}
	}
}

// owed calls f for each connection of rec's uids that was open grace
// before rec was issued and, unless churned, that the tool did not close
// early (churn).
func (r *reporter) owed(rec sentRec, grace time.Duration, churned bool, f func(cs *connState)) {
	for j := range int(rec.count) {
		u := (int(rec.first) + j) % r.users
		for k := range r.connsPerUser {
			for _, cs := range r.slots[u*r.connsPerUser+k] {
				if (cs.reason == closedByChurn && !churned) || cs.up+int64(grace) > rec.at || (cs.down != 0 && cs.down < rec.at) {
					continue
				}
				f(cs)
			}
		}
	}
}

// unexpected counts messages received that no 2xx /send asked for that
// connection: a non-2xx answer promises nothing was sent. A /send that got
// no answer (timeout) may have been sent, so it is not counted; nor is a
// retried message whose final non-2xx came after a try without an answer.
func (r *reporter) unexpected() int {
	n := 0
	for slot, gens := range r.slots {
		u := int32(slot / r.connsPerUser)
		seen := make([]map[uint64]struct{}, 0, len(gens))
		for _, cs := range gens {
			seen = append(seen, cs.seen)
		}
		if slot < len(r.streams) && r.streams[slot] != nil { // streams: reconnect only
			keys := make(map[uint64]struct{}, len(r.streams[slot].seen))
			for k := range r.streams[slot].seen {
				keys[k] = struct{}{}
			}
			seen = []map[uint64]struct{}{keys}
		}
		for _, keys := range seen {
			for key := range keys {
				s, seq := int(key>>32), int(uint32(key))
				if seq < 1 || seq > len(r.sent[s]) {
					n++ // received but never answered: the tool stops senders before it stops the reporter
					continue
				}
				rec := r.sent[s][seq-1]
				if rec.code == 0 || rec.maybe {
					continue
				}
				// u must be one of rec.count users from rec.first, wrapping.
				off := (u - rec.first + int32(r.users)) % int32(r.users)
				if rec.code/100 != 2 || off >= rec.count {
					n++
				}
			}
		}
	}
	return n
}

// Latency is the spread of receive time minus the send time in the
// message, in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func latencyOf(ns []int64) *Latency {
	if len(ns) == 0 {
		return nil
	}
	slices.Sort(ns)
	ms := func(v int64) float64 { return float64(v) / 1e6 }
	at := func(q float64) float64 { return ms(ns[min(int(q*float64(len(ns))), len(ns)-1)]) }
	var sum float64
	for _, v := range ns {
		sum += float64(v)
	}
	return &Latency{P50: at(.50), P90: at(.90), P99: at(.99), Max: ms(ns[len(ns)-1]), Mean: sum / float64(len(ns)) / 1e6}
}

func nonEmpty(m map[string]int) map[string]int {
	if len(m) == 0 {
		return nil
	}
	return m
}
