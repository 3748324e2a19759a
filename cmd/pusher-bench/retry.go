package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// The retry scenario: every message carries an idempotency key,
// <key prefix>-<sender>-<seq>; the prefix is random per run, because a
// server remembers keys for minutes and a rerun must not meet the last
// run's. A sender posts one request at a time (a keyed /send, or a
// /send/batch of keyed items with -batch-items above 1) and tries it
// until each message has a final answer:
//
//   - no answer within the try's timeout (-retry-timeout, doubled at each
//     try up to -timeout): the same body again, with the same keys, at
//     once; -retry-abandon of the first tries are hung up on as soon as
//     they are written, so that retries happen however fast the server;
//   - 409 (the key's first request still in flight) or 5xx (nothing
//     sent, nothing remembered): again after a pause that doubles;
//   - 200: acknowledged, replayed or not; anything else is final.
//
// A message whose tries run out (-retry-attempts) is given up. Then
// -retry-repeat of the requests are sent once more with their
// acknowledged items: each must come back a 200 replayed with the id of
// its first answer. The reporter's checks say the rest: every
// acknowledged key reached its uid exactly once and in order (a sender
// starts a request only when the last one is settled, and a late copy of
// a settled try is a replay, never a send).

// retryBackoff is the pause after a 409 or 5xx at the first try; it
// doubles at each try, up to -timeout.
const retryBackoff = 2 * time.Millisecond

// retryRequest is the request of the retry scenario: request n tries its
// messages (see fill) until each has a final answer, reports them, then
// maybe repeats them.
func (r *runner) retryRequest(ctx context.Context, s *sender, n int) (int, string) {
	s.fill(n)
	sentAt := time.Now().UnixNano()
	s.pendAll(func(*item) bool { return true })
	if !s.tryAll(ctx, sentAt, r.e.RetryAbandon, s.acknowledge) {
		s.giveUp(ctx)
	}
	code, errClass := 0, ""
	for i := range s.items {
		it := &s.items[i]
		s.report(it, sentAt)
		if it.code != 0 {
			code = int(it.code)
		} else {
			errClass = it.text
		}
	}
	s.repeat(ctx, sentAt)
	return code, errClass
}

// pendAll makes the items that keep pending.
func (s *sender) pendAll(keep func(*item) bool) {
	s.pending = s.pending[:0]
	for i := range s.items {
		if keep(&s.items[i]) {
			s.pending = append(s.pending, i)
		}
	}
}

// tryAll tries the pending items, sent at sentAt, until each has a final
// answer, which it hands to final; abandon of the first tries are hung
// up on. It reports whether every item got its final answer before the
// tries ran out or ctx ended.
func (s *sender) tryAll(ctx context.Context, sentAt int64, abandon float64, final func(it *item, r itemResult, noAnswer bool)) bool {
	e := s.r.e
	noAnswer := false // a try got no answer: it may have gone through
	for try := 0; len(s.pending) > 0; try++ {
		if try == e.RetryAttempts || ctx.Err() != nil {
			return false
		}
		if try > 0 {
			s.st.retries++
		}
		o := postOpts{abandon: try == 0 && s.rnd.Float64() < abandon}
		tctx, cancel := context.WithTimeout(ctx, doubled(e.RetryTimeout, try, e.RequestTimeout))
		res, _, errClass := s.postItems(tctx, s.pending, sentAt, try, o, true)
		cancel()
		if res == nil {
			switch {
			case o.abandon:
				s.st.abandoned++
			case errClass != unreadable: // counted by postItems
				s.st.timeouts++
			}
			noAnswer = true
			continue
		}
		if s.settle(res, noAnswer, final) {
			sleep(ctx, doubled(retryBackoff, try, e.RequestTimeout))
		}
	}
	return true
}

// settle hands each pending item's final answer in res to final and
// keeps pending the items to try again. It reports whether to pause
// before that (a 409 or 5xx: the server asks for time).
func (s *sender) settle(res []itemResult, noAnswer bool, final func(it *item, r itemResult, noAnswer bool)) bool {
	wait := false
	next := s.pending[:0] // filtered in place: next never passes the item read
	for j, i := range s.pending {
		switch r := res[j]; {
		case r.code == http.StatusConflict || r.code/100 == 5:
			if r.code == http.StatusConflict {
				s.st.conflicts++
			}
			wait = true
			next = append(next, i)
		default:
			final(&s.items[i], r, noAnswer)
		}
	}
	s.pending = next
	return wait
}

// acknowledge records the final answer r for it.
func (s *sender) acknowledge(it *item, r itemResult, noAnswer bool) {
	it.code, it.id, it.answered = r.code, r.id, time.Now().UnixNano()
	switch {
	case r.code != http.StatusOK:
		it.maybe = noAnswer
		s.st.noteError(r)
	case r.replayed:
		s.st.replayedAcks++
	}
}

// giveUp ends the pending items without a final answer: they may or may
// not have gone out.
func (s *sender) giveUp(ctx context.Context) {
	now := time.Now().UnixNano()
	for _, i := range s.pending {
		it := &s.items[i]
		it.answered = now
		if ctx.Err() != nil {
			it.text = "cancelled: the run ended"
			continue
		}
		it.text = "no 200 within -retry-attempts tries"
		s.st.gaveUp++
	}
}

// repeat sends the acknowledged items of the request once more (tried
// like the first time), with their keys, for -retry-repeat of the
// requests: each must come back a 200 replayed with the id of its first
// answer. A repeat the server sent again also shows as a duplicate at
// its receiver.
func (s *sender) repeat(ctx context.Context, sentAt int64) {
	if s.rnd.Float64() >= s.r.e.RetryRepeat {
		return
	}
	s.pendAll(func(it *item) bool { return it.code == http.StatusOK })
	if len(s.pending) == 0 {
		return
	}
	s.st.repeats++
	s.tryAll(ctx, sentAt, 0, func(it *item, r itemResult, _ bool) {
		if r.code == http.StatusOK && r.replayed && r.id == it.id {
			return
		}
		s.st.wrongReplays++
		if s.st.wrongReplay == "" {
			s.st.wrongReplay = fmt.Sprintf("key %s: first answer id %q; the repeat got %d, replayed %v, id %q %s",
				s.appendKey(nil, it.seq), it.id, r.code, r.replayed, r.id, r.err)
		}
	})
}

// doubled is base doubled try times, at most ceiling.
func doubled(base time.Duration, try int, ceiling time.Duration) time.Duration {
	d := base
	for range try {
		if d >= ceiling/2 {
			return ceiling
		}
		d *= 2
	}
	return min(d, ceiling)
}

// validateItems returns the problems of the batch and retry settings.
func (e *Engine) validateItems() []error {
	if e.Scenario != scenarioBatch && e.Scenario != scenarioRetry {
		return nil
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if e.BatchItems < 1 || e.BatchItems > 1<<20 {
		bad("invalid -batch-items %d: between 1 and %d", e.BatchItems, 1<<20)
	}
	if e.Scenario != scenarioRetry {
		return errs
	}
	if e.BatchItems > e.Users {
		// Two tries of one batch may race on the server, and the order of
		// their items to one uid is then not promised.
		bad("invalid -batch-items %d for retry: at most -users (%d), so that a batch has one item per uid", e.BatchItems, e.Users)
	}
	if e.RetryTimeout <= 0 {
		bad("invalid -retry-timeout %s: must be positive", e.RetryTimeout)
	}
	if e.RetryAttempts < 1 {
		bad("invalid -retry-attempts %d: must be at least 1", e.RetryAttempts)
	}
	if e.RetryAbandon < 0 || e.RetryAbandon > 1 || e.RetryRepeat < 0 || e.RetryRepeat > 1 {
		bad("-retry-abandon and -retry-repeat are between 0 and 1")
	}
	return errs
}
