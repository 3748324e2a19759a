package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// The batch scenario is send with each request one POST /send/batch of
// BatchItems unicasts; the answer has an entry per item, in item order,
// and each entry is that message's answer. The retry scenario posts the
// same items with idempotency keys (retry.go). Both report every message
// as an evSent of its own, so the reporter's checks (lost, duplicates,
// order, unexpected) are per message as in send.

// item is one unicast of a batch or of a keyed /send: its target user,
// its seq, and what came of it.
type item struct {
	user     int
	seq      int32
	code     int32  // its final answer: 200 sent (or replayed), a status, 0 none
	text     string // with code 0: why
	id       string // retry: the id it was acknowledged with
	maybe    bool   // retry: a try without an answer came before its final non-200, so it may have gone out
	answered int64  // unix ns of its final answer
}

// itemResult is what one answer said of one item.
type itemResult struct {
	code     int32 // 200: sent, or replayed; else the status
	id       string
	replayed bool
	err      string // with a status: the server's reason
}

// batchEntry is one entry of the results of a /send/batch answer.
type batchEntry struct {
	ID       string `json:"id"`
	Replayed bool   `json:"replayed"`
	Status   int    `json:"status"`
	Error    string `json:"error"`
}

// unreadable is the class of a 2xx answer whose body is not what the
// contract says: the tool cannot tell which of its messages went out.
const unreadable = "unreadable answer"

// batched reports whether the scenario posts to /send/batch.
func (e *Engine) batched() bool {
	return e.Scenario == scenarioBatch || e.Scenario == scenarioRetry && e.BatchItems > 1
}

// perRequest is the number of messages in one request of batch or retry.
func (e *Engine) perRequest() int {
	if e.batched() {
		return e.BatchItems
	}
	return 1
}

// itemRequests is the number of requests batch and retry make for
// Messages messages: the last may carry fewer.
func (e *Engine) itemRequests() int {
	per := e.perRequest()
	return (e.Messages + per - 1) / per
}

// fill sets s.items to the messages of request n: messages n×per up to
// Messages, message m to user m mod Users. Consecutive messages go to
// distinct uids, so a batch of at most Users items has one item per uid.
func (s *sender) fill(n int) {
	e := s.r.e
	per := e.perRequest()
	s.items = s.items[:0]
	for m := n * per; m < min(n*per+per, e.Messages); m++ {
		s.seq++
		s.items = append(s.items, item{user: m % e.Users, seq: s.seq})
	}
}

// batchRequest is the request of the batch scenario: request n posts its
// messages (see fill) in one /send/batch and reports each.
func (r *runner) batchRequest(ctx context.Context, s *sender, n int) (int, string) {
	s.fill(n)
	sentAt := time.Now().UnixNano()
	s.pendAll(func(*item) bool { return true })
	res, code, errClass := s.postItems(ctx, s.pending, sentAt, 0, postOpts{}, false)
	now := time.Now().UnixNano()
	for i := range s.items {
		it := &s.items[i]
		it.answered = now
		if res == nil {
			it.text = errClass
		} else if it.code = res[i].code; it.code != http.StatusOK {
			s.st.noteError(res[i])
		}
		s.report(it, sentAt)
	}
	return code, errClass
}

// report hands the outcome of it to the reporter.
func (s *sender) report(it *item, sentAt int64) {
	if it.code == http.StatusOK {
		s.r.expect.Add(int64(s.r.e.ConnsPerUser))
	}
	s.rep.emit(event{
		kind: evSent, sender: s.id, seq: it.seq, first: int32(it.user), count: 1,
		at: sentAt, t2: it.answered, code: it.code, text: it.text, flags: flagIf(it.maybe, flagMaybeSent),
	})
}

// postItems posts the items at idx, sent at sentAt, with their keys when
// keyed: as one /send/batch, or as one /send (one item) when the
// scenario does not batch. It returns one result per item, the HTTP
// status, or no results and the class of the error when there is no
// answer to read.
func (s *sender) postItems(ctx context.Context, idx []int, sentAt int64, try int, o postOpts, keyed bool) ([]itemResult, int, string) {
	if s.r.e.batched() {
		s.body = s.appendBatch(s.body[:0], idx, sentAt, keyed)
	} else {
		it := &s.items[idx[0]]
		s.body = s.appendUnicast(s.body[:0], it.user, it.seq, sentAt)
		if keyed {
			o.key = string(s.appendKey(nil, it.seq))
		}
	}
	o.keep = true
	s.st.posts++
	a, errClass := s.exchange(ctx, s.node(try), "application/json", s.body, o)
	if errClass != "" {
		return nil, 0, errClass
	}
	res, ok := s.readAnswer(a, len(idx))
	if !ok {
		s.st.unreadable(a)
		return nil, a.code, unreadable
	}
	return res, a.code, ""
}

// appendBatch appends the /send/batch body of the items at idx.
func (s *sender) appendBatch(b []byte, idx []int, sentAt int64, keyed bool) []byte {
	b = append(b, `{"messages":[`...)
	for j, i := range idx {
		if j > 0 {
			b = append(b, ',')
		}
		it := &s.items[i]
		b = s.appendUnicast(b, it.user, it.seq, sentAt)
		if keyed {
			b = append(b[:len(b)-1], `,"idempotency_key":"`...) // reopen the object
			b = s.appendKey(b, it.seq)
			b = append(b, `"}`...)
		}
	}
	return append(b, "]}"...)
}

// appendKey appends the idempotency key of the sender's message seq:
// the run's key prefix, the sender and seq (letters, digits and '-').
func (s *sender) appendKey(b []byte, seq int32) []byte {
	b = append(b, s.r.keyPrefix...)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(s.id), 10)
	b = append(b, '-')
	return strconv.AppendInt(b, int64(seq), 10)
}

// readAnswer turns the answer to n items into one result each. false:
// a 2xx whose body is not what the contract promises.
func (s *sender) readAnswer(a answer, n int) ([]itemResult, bool) {
	res := s.results[:0]
	switch {
	case a.code/100 != 2:
		// Refused whole: the reason is one line of text/plain.
		reason := string(bytes.TrimSpace(a.body[:min(len(a.body), 200)]))
		for range n {
			res = append(res, itemResult{code: int32(a.code), err: reason})
		}
	case !s.r.e.batched():
		var v struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(a.body, &v) != nil || v.ID == "" {
			return nil, false
		}
		res = append(res, itemResult{code: http.StatusOK, id: v.ID, replayed: a.replayed})
	default:
		var v struct {
			Results []batchEntry `json:"results"`
		}
		if json.Unmarshal(a.body, &v) != nil || len(v.Results) != n {
			return nil, false
		}
		for _, en := range v.Results {
			switch {
			case en.Status != 0 && en.Status != http.StatusOK:
				res = append(res, itemResult{code: int32(en.Status), err: en.Error})
			case en.ID == "":
				return nil, false
			default:
				res = append(res, itemResult{code: http.StatusOK, id: en.ID, replayed: en.Replayed})
			}
		}
	}
	s.results = res
	return res, true
}

// postStats counts what the batch and retry senders met beyond each
// message's outcome. Each sender keeps its own and hands it to the
// runner when it closes, so nothing is shared while they run.
type postStats struct {
	posts, retries, timeouts, abandoned, conflicts, replayedAcks int
	repeats, wrongReplays, gaveUp, badAnswers                    int
	firstError, wrongReplay, badAnswer                           string // the first of each, for the report
}

// noteError keeps the first failed item's status and reason.
func (p *postStats) noteError(r itemResult) {
	if p.firstError == "" {
		p.firstError = fmt.Sprintf("%d %s", r.code, r.err)
	}
}

// unreadable counts a 2xx answer whose body the tool could not read.
func (p *postStats) unreadable(a answer) {
	p.badAnswers++
	if p.badAnswer == "" {
		p.badAnswer = fmt.Sprintf("%d %q", a.code, a.body[:min(len(a.body), 200)])
	}
}

func (p *postStats) add(o *postStats) {
	p.posts += o.posts
	p.retries += o.retries
	p.timeouts += o.timeouts
	p.abandoned += o.abandoned
	p.conflicts += o.conflicts
	p.replayedAcks += o.replayedAcks
	p.repeats += o.repeats
	p.wrongReplays += o.wrongReplays
	p.gaveUp += o.gaveUp
	p.badAnswers += o.badAnswers
	for _, f := range []struct{ dst, src *string }{{&p.firstError, &o.firstError}, {&p.wrongReplay, &o.wrongReplay}, {&p.badAnswer, &o.badAnswer}} {
		if *f.dst == "" {
			*f.dst = *f.src
		}
	}
}

// addStats adds a sender's counts to the run's.
func (r *runner) addStats(p *postStats) {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	r.stats.add(p)
}

// postFigures puts the senders' counts in rep; the senders have closed.
func (r *runner) postFigures(rep *Report) {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	p := &r.stats
	rep.Posts, rep.BadAnswers, rep.BadAnswerSample, rep.FirstError = p.posts, p.badAnswers, p.badAnswer, p.firstError
	rep.Retries, rep.Timeouts, rep.Abandoned, rep.Conflicts = p.retries, p.timeouts, p.abandoned, p.conflicts
	rep.ReplayedAcks, rep.Repeats, rep.WrongReplays, rep.WrongReplaySample, rep.GaveUp = p.replayedAcks, p.repeats, p.wrongReplays, p.wrongReplay, p.gaveUp
}
