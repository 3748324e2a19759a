package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go-pusher/internal/cluster"
	"go-pusher/internal/idempotency"
	"go-pusher/internal/sendreq"
	"go-pusher/internal/stream"
	"go-pusher/message"
)

// This file is the core that /send and /send/batch share: a request is a
// list of jobs, one per message, pushed together (one lookup, one log
// write, one publish for all), each with its own result.

// idempotencyStore remembers idempotency keys: in memory on a single node
// (idempotency.Memory), in Redis in cluster mode (cluster.Broker).
type idempotencyStore interface {
	Claim(ctx context.Context, cs []idempotency.Claim) ([]idempotency.Outcome, error)
	Finish(ctx context.Context, ds []idempotency.Done) error
	Release(ctx context.Context, cs []idempotency.Claim)
}

var (
	_ idempotencyStore = (*idempotency.Memory)(nil)
	_ idempotencyStore = (*cluster.Broker)(nil)
)

// job is one message of a request on its way.
type job struct {
	req sendreq.Request
	key string // idempotency key; "" when none

	claim    *idempotency.Claim  // the key, claimed by this request
	pub      cluster.Publication // its message and uids, once it has somewhere to go
	notFound []string            // of a multicast: the uids without a connection
	res      result
}

// result is what one message got: a 200 and its JSON object, or a refusal
// (404, 409, 422) and its reason. A zero status is not decided yet.
type result struct {
	status   int
	body     string // JSON object without a newline, or the reason; "" for a unicast's 200
	id       string // a unicast's 200: the message id (its answer is built when written)
	replayed bool   // a remembered answer: nothing was sent
}

// answer is a 200's JSON object.
func (r result) answer() string {
	if r.body == "" {
		return unicastAnswer(r.id)
	}
	return r.body
}

// The refusals of the idempotency rules, and of a unicast whose uid may
// be connected to a node that is resubscribing (a batch item's result).
var (
	resInFlight  = result{status: http.StatusConflict, body: "request with this idempotency key in progress"}
	resMismatch  = result{status: http.StatusUnprocessableEntity, body: "idempotency key reused with a different request"}
	resResyncing = result{status: http.StatusServiceUnavailable, body: resyncingReason}
)

const resyncingReason = "cluster resubscribing after a Redis outage: the message was not sent; retry"

// push sends jobs: it claims their idempotency keys, looks their uids up,
// logs every message that has somewhere to go (one write for all: a log
// failure refuses all) and publishes them in order. On success every job
// has its result. A failure of the log or of the cluster is the whole
// request's: its reply is returned, and nothing was sent.
func (s *Server) push(ctx context.Context, accepted time.Time, jobs []*job) *reply {
	if !s.enter() {
		return refusal(http.StatusServiceUnavailable, "server shutting down")
	}
	defer s.leave()
	defer func() {
		// The fronts answer a panic with 500; the keys must not stay
		// claimed (on a single node, for ever).
		if v := recover(); v != nil {
			s.releaseKeys(ctx, jobs, true)
			panic(v)
		}
	}()

	if fail := s.claimKeys(ctx, jobs); fail != nil {
		return fail
	}
	onlineSet, err := s.lookup(ctx, jobs)
	if err != nil {
		s.releaseKeys(ctx, jobs, true)
		if errors.Is(err, cluster.ErrResyncing) {
			// Brief and expected after an outage: not worth a line each.
			s.log.Debug("cluster lookup uncertain", "err", err)
			return refusal(http.StatusServiceUnavailable, resyncingReason)
		}
		s.log.Warn("cluster lookup failed", "err", err)
		return refusal(http.StatusServiceUnavailable, "cluster unavailable: the message was not sent")
	}

	logs := make([]message.Log, 0, len(jobs))
	pubs := make([]*cluster.Publication, 0, len(jobs))
	for _, j := range jobs {
		if j.res.status != 0 {
			continue
		}
		online := j.req.UIDs
		if j.req.Multicast {
			online = nil
			for _, uid := range j.req.UIDs {
				if onlineSet(uid) {
					online = append(online, uid)
				} else {
					j.notFound = append(j.notFound, uid)
				}
			}
		} else if !onlineSet(online[0]) {
			online = nil
		}
		if len(online) == 0 {
			id := ""
			if j.req.Multicast {
				// A multicast with nobody online is still a 200 with an
				// id, of a message that went nowhere.
				id = s.ids.Next(accepted)
			}
			j.settle(id, nil)
			continue
		}
		m := stream.NewMessage(s.ids.Next(accepted), StringToBytes(j.req.Message), accepted)
		j.pub = cluster.Publication{Message: m, UIDs: online, Claim: j.claim}
		if j.claim != nil && !j.req.Multicast {
			j.pub.Answer = unicastAnswer(m.ID)
		}
		logs = append(logs, message.Log{ID: m.ID, UIDs: online, Message: j.req.Message, Time: accepted})
		pubs = append(pubs, &j.pub)
	}
	if len(logs) > 0 {
		// The log bounds the wait itself (-message-log-timeout).
		if err := s.msgLog.Log(ctx, logs...); err != nil {
			s.log.Warn("message log failed", "messages", len(logs), "id", logs[0].ID, "err", err)
			s.releaseKeys(ctx, jobs, true)
			return refusal(http.StatusServiceUnavailable, "message log unavailable: the message was not sent")
		}
		// The broker bounds the publish itself; a client that hangs up
		// must not cut it in half.
		if err := s.broker.PublishAll(context.WithoutCancel(ctx), pubs); err != nil {
			s.log.Warn("publish failed", "messages", len(pubs), "id", pubs[0].Message.ID, "err", err)
			s.publishFailed(ctx, jobs)
			return refusal(http.StatusServiceUnavailable, "cluster unavailable: the message may not have been delivered")
		}
	}
	for _, j := range jobs {
		if j.pub.Message != nil {
			s.published(j)
		}
	}
	s.finishKeys(ctx, jobs)
	return nil
}

// publishFailed settles jobs after a failed publish. Redis may have run
// some publishes before it failed to answer: their outcome is unknown, so
// their log rows stay queued and their keys stay claimed until the claims
// lapse (a retry meanwhile gets 409, not a second send). Messages that
// surely went nowhere are marked failed, and the keys of every other job
// are released: the request as a whole failed.
func (s *Server) publishFailed(ctx context.Context, jobs []*job) {
	var free []idempotency.Claim
	for _, j := range jobs {
		p := &j.pub
		if p.Message != nil && !p.Unsent {
			continue // outcome unknown
		}
		if p.Message != nil {
			for _, uid := range p.UIDs {
				s.msgLog.Update(p.Message.ID, uid, message.StatusFailed)
			}
		}
		if j.claim != nil {
			free = append(free, *j.claim)
		}
	}
	if len(free) > 0 {
		s.idem.Release(context.WithoutCancel(ctx), free)
	}
}

// refusal is the reply of a request refused whole.
func refusal(status int, reason string) *reply {
	r := textReply(status, reason)
	return &r
}

// lookup asks which of the uids of jobs (those not decided yet) have a
// connection: one question for all. Without a message log it asks
// nothing and says all: the publish tells (see Server.lookupFirst).
func (s *Server) lookup(ctx context.Context, jobs []*job) (func(uid string) bool, error) {
	if !s.lookupFirst {
		return func(string) bool { return true }, nil
	}
	if len(jobs) == 1 {
		// The uids of one request are distinct already.
		if jobs[0].res.status != 0 {
			return func(string) bool { return false }, nil
		}
		online, _, err := s.broker.Online(ctx, jobs[0].req.UIDs)
		if err != nil {
			return nil, err
		}
		if len(online) == 1 {
			return func(uid string) bool { return uid == online[0] }, nil
		}
		return setOf(online, len(online)), nil
	}
	// uid → online; built with every uid first, to ask for each once.
	set := make(map[string]bool)
	var uids []string
	for _, j := range jobs {
		if j.res.status != 0 {
			continue
		}
		for _, uid := range j.req.UIDs {
			if _, dup := set[uid]; !dup {
				set[uid] = false
				uids = append(uids, uid)
			}
		}
	}
	if len(uids) == 0 {
		return func(string) bool { return false }, nil
	}
	online, _, err := s.broker.Online(ctx, uids)
	if err != nil {
		return nil, err
	}
	for _, uid := range online {
		set[uid] = true
	}
	return func(uid string) bool { return set[uid] }, nil
}

func setOf(uids []string, n int) func(string) bool {
	set := make(map[string]struct{}, n)
	for _, uid := range uids {
		set[uid] = struct{}{}
	}
	return func(uid string) bool { _, ok := set[uid]; return ok }
}

// published records what the publish of j's message found: uids that went
// away between the lookup and the publish get nothing and count as not
// found; a claim lost meanwhile is a 409.
func (s *Server) published(j *job) {
	p := &j.pub
	if p.Replay != "" {
		// An earlier claim of the key sent it (Redis Cluster): its answer.
		for _, uid := range p.UIDs {
			s.msgLog.Update(p.Message.ID, uid, message.StatusFailed)
		}
		j.res = result{status: http.StatusOK, body: p.Replay, replayed: true}
		s.metrics.replays.Inc()
		return
	}
	if p.Refused {
		for _, uid := range p.UIDs {
			s.msgLog.Update(p.Message.ID, uid, message.StatusFailed)
		}
		j.res = resInFlight
		return
	}
	for _, uid := range append(p.Gone, p.Unsure...) {
		s.msgLog.Update(p.Message.ID, uid, message.StatusFailed)
	}
	if len(p.Unsure) > 0 && !j.req.Multicast {
		// Its node is resubscribing: the uid may be connected there.
		j.res = resResyncing
		return
	}
	// A multicast's other uids went out: the unsure ones are listed as
	// not found rather than failing the whole message.
	p.UIDs, j.notFound = moveGone(p.UIDs, j.notFound, append(p.Gone, p.Unsure...))
	j.settle(p.Message.ID, p.UIDs)
}

// settle gives j its result: its message id went to the uids of sent.
func (j *job) settle(id string, sent []string) {
	switch {
	case j.req.Multicast:
		j.res = result{status: http.StatusOK, body: multicastAnswer(id, sent, j.notFound)}
	case len(sent) == 0:
		j.res = result{status: http.StatusNotFound, body: "client not found: " + j.req.UIDs[0]}
	default:
		j.res = result{status: http.StatusOK, id: id}
	}
}

func unicastAnswer(id string) string { return `{"id":"` + id + `"}` }

func multicastAnswer(id string, sent, notFound []string) string {
	if sent == nil {
		sent = []string{}
	}
	if notFound == nil {
		notFound = []string{}
	}
	b, err := json.Marshal(struct {
		ID       string   `json:"id"`
		Sent     []string `json:"sent"`
		NotFound []string `json:"not_found"`
	}{id, sent, notFound})
	if err != nil {
		// Strings always marshal; this is unreachable.
		panic(err)
	}
	return string(b)
}

// moveGone moves the uids of gone from online to offline, keeping order.
func moveGone(online, offline, gone []string) ([]string, []string) {
	if len(gone) == 0 {
		return online, offline
	}
	g := make(map[string]bool, len(gone))
	for _, uid := range gone {
		g[uid] = true
	}
	kept := online[:0]
	for _, uid := range online {
		if g[uid] {
			offline = append(offline, uid)
		} else {
			kept = append(kept, uid)
		}
	}
	return kept, offline
}

// claimKeys claims the idempotency keys of jobs; a job whose key was
// answered before, is in flight or belongs to another request gets its
// result now. A store that cannot answer refuses the request.
func (s *Server) claimKeys(ctx context.Context, jobs []*job) *reply {
	if s.idem == nil {
		return nil
	}
	var cs []idempotency.Claim
	var keyed []*job
	for _, j := range jobs {
		if j.key == "" {
			continue
		}
		token := rand.Text()
		cs = append(cs, idempotency.Claim{Key: j.key, Fingerprint: idempotency.Fingerprint(j.req.Multicast, j.req.UIDs, j.req.Message), Token: token})
		keyed = append(keyed, j)
	}
	if len(cs) == 0 {
		return nil
	}
	outs, err := s.idem.Claim(ctx, cs)
	if err != nil {
		s.log.Warn("idempotency claim failed", "keys", len(cs), "err", err)
		// Some claims may have been made: release what is ours.
		s.idem.Release(context.WithoutCancel(ctx), cs)
		return refusal(http.StatusServiceUnavailable, "cluster unavailable: the message was not sent")
	}
	for i, j := range keyed {
		switch outs[i].State {
		case idempotency.Claimed:
			j.claim = &cs[i]
		case idempotency.Replay:
			j.res = result{status: http.StatusOK, body: outs[i].Answer, replayed: true}
			s.metrics.replays.Inc()
		case idempotency.InFlight:
			j.res = resInFlight
		case idempotency.Mismatch:
			j.res = resMismatch
		}
	}
	return nil
}

// releaseKeys lets the keys jobs claimed be claimed again: all of them
// (the request failed whole) or those of jobs that did not get a 200.
func (s *Server) releaseKeys(ctx context.Context, jobs []*job, all bool) {
	var cs []idempotency.Claim
	for _, j := range jobs {
		if j.claim != nil && (all || j.res.status != http.StatusOK) {
			cs = append(cs, *j.claim)
		}
	}
	if len(cs) > 0 {
		s.idem.Release(context.WithoutCancel(ctx), cs)
	}
}

// finishKeys remembers the answers of the claimed jobs that got a 200
// (those the publish did not finish already) and releases the others.
func (s *Server) finishKeys(ctx context.Context, jobs []*job) {
	var ds []idempotency.Done
	for _, j := range jobs {
		if j.claim != nil && j.res.status == http.StatusOK && !j.pub.Finished {
			ds = append(ds, idempotency.Done{Claim: *j.claim, Answer: j.res.answer()})
		}
	}
	if len(ds) > 0 {
		if err := s.idem.Finish(context.WithoutCancel(ctx), ds); err != nil {
			// The messages went out; their keys answer 409 until the
			// claims lapse, then a retry would send again.
			s.log.Warn("idempotency finish failed: the keys answer 409 until their claims lapse", "keys", len(ds), "err", err)
		}
	}
	s.releaseKeys(ctx, jobs, false)
}

// batchReply is the 200 of /send/batch: the results in item order.
func batchReply(jobs []*job) reply {
	n := 16
	for _, j := range jobs {
		n += len(j.res.body) + len(j.res.id) + 40
	}
	b := make([]byte, 0, n)
	b = append(b, `{"results":[`...)
	for i, j := range jobs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendResult(b, j.res)
	}
	b = append(b, "]}\n"...)
	// b is not written to again.
	return reply{status: http.StatusOK, json: true, body: BytesToString(b)}
}

// appendResult appends r as a batch entry: a 200's object (with
// "replayed": true when it was), or {"status": N, "error": "..."}.
func appendResult(b []byte, r result) []byte {
	if r.status != http.StatusOK {
		b = append(b, `{"status":`...)
		b = strconv.AppendInt(b, int64(r.status), 10)
		b = append(b, `,"error":`...)
		b = stream.AppendJSONString(b, r.body)
		return append(b, '}')
	}
	if r.body == "" {
		b = append(b, `{"id":"`...)
		b = append(b, r.id...)
		return append(b, `"}`...)
	}
	if !r.replayed {
		return append(b, r.body...)
	}
	// The object ends in '}': the member goes before it.
	b = append(b, r.body[:len(r.body)-1]...)
	return append(b, `,"replayed":true}`...)
}
