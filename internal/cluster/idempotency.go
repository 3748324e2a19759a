package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/idempotency"
)

// This file keeps idempotency keys in Redis, so that every node sees the
// same keys. A key's value is its claim while its request runs,
// "p|<token>|<fingerprint>", and its answer once it got a 200,
// "d|<fingerprint>|<answer>". The publish script sends only while the
// key still holds the request's claim (see publishScript), which is what
// keeps two nodes from both sending one key.

// MinClaimTTL is the least a claim lasts in Redis if its node never
// finishes or releases it (the node died): until then the key answers
// 409. A request that takes longer than its claim to publish finds the
// claim gone and is refused (409) rather than risking a second send, so a
// claim outlives the longest request: claim, lookup, log and publish,
// each bounded by OpTimeout (see claimTTL).
const MinClaimTTL = time.Minute

// claimTTL is how long b's claims last: MinClaimTTL, or four OpTimeouts
// when that is longer.
func (b *Broker) claimTTL() time.Duration { return max(MinClaimTTL, 4*b.cfg.OpTimeout) }

func claimValue(c idempotency.Claim) string {
	return "p|" + c.Token + "|" + c.Fingerprint
}

func finishedValue(fingerprint, answer string) string {
	return "d|" + fingerprint + "|" + answer
}

// outcome reads the value a claim found under its key.
func outcome(v string, c idempotency.Claim) (idempotency.Outcome, error) {
	kind, rest, _ := strings.Cut(v, "|")
	switch kind {
	case "p":
		_, fp, _ := strings.Cut(rest, "|")
		if fp != c.Fingerprint {
			return idempotency.Outcome{State: idempotency.Mismatch}, nil
		}
		return idempotency.Outcome{State: idempotency.InFlight}, nil
	case "d":
		fp, answer, _ := strings.Cut(rest, "|")
		if fp != c.Fingerprint {
			return idempotency.Outcome{State: idempotency.Mismatch}, nil
		}
		return idempotency.Outcome{State: idempotency.Replay, Answer: answer}, nil
	}
	return idempotency.Outcome{}, fmt.Errorf("idempotency key %q holds %.20q: not a value of ours", c.Key, v)
}

// Claim claims each of cs in Redis (SET NX GET: set it unless it is set,
// and say what was there), in one round trip.
func (b *Broker) Claim(ctx context.Context, cs []idempotency.Claim) ([]idempotency.Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	cmds := make([]*redis.StatusCmd, len(cs))
	err := b.pipelined(ctx, len(cs), func(i int) string { return b.idemKey(cs[i].Key) }, func(p redis.Pipeliner, i int) {
		cmds[i] = p.SetArgs(ctx, b.idemKey(cs[i].Key), claimValue(cs[i]), redis.SetArgs{Mode: "NX", Get: true, TTL: b.claimTTL()})
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis claim idempotency keys: %w", err)
	}
	out := make([]idempotency.Outcome, len(cs))
	for i, cmd := range cmds {
		v, err := cmd.Result()
		switch {
		case errors.Is(err, redis.Nil):
			out[i] = idempotency.Outcome{State: idempotency.Claimed}
		case err != nil:
			return nil, fmt.Errorf("redis claim idempotency key: %w", err)
		default:
			if out[i], err = outcome(v, cs[i]); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// finishScript and releaseScript change a key only while it holds the
// caller's claim. KEYS: the key. ARGV: the claim; for finish, the
// finished value and its TTL in ms.
const (
	finishScript  = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 0`
	releaseScript = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0`
)

// Finish remembers the answers of ds for IdempotencyTTL.
func (b *Broker) Finish(ctx context.Context, ds []idempotency.Done) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	err := b.pipelined(ctx, len(ds), func(i int) string { return b.idemKey(ds[i].Key) }, func(p redis.Pipeliner, i int) {
		d := ds[i]
		p.Eval(ctx, finishScript, []string{b.idemKey(d.Key)}, claimValue(d.Claim), finishedValue(d.Fingerprint, d.Answer), b.cfg.IdempotencyTTL.Milliseconds())
	})
	if err != nil {
		return fmt.Errorf("redis finish idempotency keys: %w", err)
	}
	return nil
}

// Release lets cs be claimed again at once. It is best effort: a claim it
// cannot release lapses after claimTTL.
func (b *Broker) Release(ctx context.Context, cs []idempotency.Claim) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	err := b.pipelined(ctx, len(cs), func(i int) string { return b.idemKey(cs[i].Key) }, func(p redis.Pipeliner, i int) {
		p.Eval(ctx, releaseScript, []string{b.idemKey(cs[i].Key)}, claimValue(cs[i]))
	})
	if err != nil {
		b.log.Warn("release idempotency keys failed: they lapse by themselves", "keys", len(cs), "lapse", b.claimTTL(), "err", err)
	}
}

// pipelined runs n commands, command i on key(i), in a pipeline per
// master that serves some of them.
func (b *Broker) pipelined(ctx context.Context, n int, key func(int) string, add func(redis.Pipeliner, int)) error {
	rt := b.routes.Load()
	var order []*shard
	groups := map[*shard][]int{}
	for i := range n {
		s := rt.forKey(key(i))
		if _, ok := groups[s]; !ok {
			order = append(order, s)
		}
		groups[s] = append(groups[s], i)
	}
	var errs []error
	for _, s := range order {
		if s.rdb == nil {
			errs = append(errs, errNoMaster)
			continue
		}
		pipe := s.rdb.Pipeline()
		for _, i := range groups[s] {
			add(pipe, i)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	b.failed(err)
	return err
}
