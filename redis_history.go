package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
)

// This file is the history half of the Redis broker: the publish script
// that gives offsets and stores messages, since= replays, and the repair
// after a lost pub/sub connection.

// publishScript gives a message its uid's next offset, stores it in the
// uid's history and publishes it, atomically, so that any node can serve
// a since= and offsets follow publish order. A uid nobody subscribes to
// gets nothing stored and 0 receivers (its /send is a 404).
//
// KEYS: the uid's state hash (epoch e, last offset n) and history stream.
// ARGV: channel, message ("id|nanos|message"), an epoch for a new state,
// history size, history TTL in ms, state TTL in ms.
const publishScript = `
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[1])
if tonumber(subs[2]) == 0 then return {0, '', 0} end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'o', n, 'd', ARGV[2])
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[5])
  if cutoff > 0 then redis.call('XTRIM', KEYS[2], 'MINID', cutoff) end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local rcv = redis.call('PUBLISH', ARGV[1], epoch .. ':' .. n .. '|' .. ARGV[2])
return {rcv, epoch, n}
`

// redisStateTTL is how long a uid's epoch and offset outlive its last
// message in Redis; after it the uid starts a new epoch.
const redisStateTTL = 24 * time.Hour

// Publish implements Broker: the publish script once per uid, pipelined.
// A uid whose channel nobody subscribes to is gone.
func (b *RedisBroker) Publish(ctx context.Context, m *Message, uids []string) (gone []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.opTimeout)
	defer cancel()
	tail := encodeEnvelope(m)
	epoch, err := newEpoch()
	if err != nil {
		return nil, err
	}
	stateTTL := max(redisStateTTL, b.hist.TTL).Milliseconds()
	err = inBatches(uids, func(batch []string) error {
		cmds := make([]*redis.Cmd, len(batch))
		todo := make([]int, len(batch)) // indexes of batch still to run
		for i := range todo {
			todo[i] = i
		}
		for attempt := 0; ; attempt++ {
			pipe := b.rdb.Pipeline()
			for _, i := range todo {
				cmds[i] = b.publish.EvalSha(ctx, pipe, []string{b.stateKey(batch[i]), b.histKey(batch[i])},
					b.channel(batch[i]), tail, epoch, b.hist.Size, b.hist.TTL.Milliseconds(), stateTTL)
			}
			_, err := pipe.Exec(ctx)
			if err == nil {
				break
			}
			// Only the commands Redis refused with NOSCRIPT (it restarted
			// and forgot the script) did not run; the others must not run
			// twice.
			var again []int
			for _, i := range todo {
				if e := cmds[i].Err(); e != nil {
					if !redis.HasErrorPrefix(e, "NOSCRIPT") || attempt > 0 {
						return e
					}
					again = append(again, i)
				}
			}
			if err := b.publish.Load(ctx, b.rdb).Err(); err != nil {
				return err
			}
			todo = again
		}
		b.published.Add(float64(len(batch)))
		for i, c := range cmds {
			res, err := c.Slice()
			if err != nil || len(res) != 3 {
				return fmt.Errorf("publish script: %v", err)
			}
			if rcv, _ := res[0].(int64); rcv == 0 {
				gone = append(gone, batch[i])
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis publish: %w", err)
	}
	return gone, nil
}

// Replay implements Broker: wait until this node's subscription to uid is
// in place (so that everything newer arrives live), then read the uid's
// state and history from Redis.
func (b *RedisBroker) Replay(ctx context.Context, uid string, since position) ([]qitem, bool) {
	items, ok := b.replay(ctx, uid, since)
	result := "recovered"
	if !ok {
		result, items = "failed", nil
	}
	b.recovered.WithLabelValues(result).Inc()
	return items, ok
}

func (b *RedisBroker) replay(ctx context.Context, uid string, since position) ([]qitem, bool) {
	if b.hist.Size == 0 {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, redisHealthInterval)
	defer cancel()
	if err := b.waitSubscribed(ctx, uid); err != nil {
		b.log.Warn("replay: subscription not confirmed", "uid", uid, "err", err)
		return nil, false
	}
	items, ok, err := b.readSince(ctx, uid, since)
	if err != nil {
		b.log.Warn("replay: read history", "uid", uid, "err", err)
	}
	return items, ok
}

// readSince reads from Redis the messages of uid after from, in offset
// order, and whether history holds all of them up to the uid's latest.
// It reads only as many entries as are missing (and a few more, for the
// messages that may arrive meanwhile), not the whole stream.
func (b *RedisBroker) readSince(ctx context.Context, uid string, from position) ([]qitem, bool, error) {
	if b.hist.Size == 0 {
		return nil, false, nil
	}
	var state *redis.SliceCmd
	var now *redis.TimeCmd
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		state = p.HMGet(ctx, b.stateKey(uid), "e", "n")
		now = p.Time(ctx)
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	epoch, _ := state.Val()[0].(string)
	last, _ := strconv.ParseUint(fmt.Sprint(state.Val()[1]), 10, 64)
	if from.epoch == "" && from.n == 0 {
		from.epoch = epoch // a baseline taken before the uid had a state
	}
	if epoch != from.epoch || from.n > last {
		return nil, false, nil
	}
	missing := last - from.n
	if missing == 0 {
		return nil, true, nil
	}
	if missing > uint64(b.hist.Size) {
		return nil, false, nil
	}
	// Newest first; messages published since the state was read come on
	// top, hence the margin, and once more with the whole stream.
	cutoff := now.Val().Add(-b.hist.TTL).UnixMilli()
	for _, count := range []int64{int64(missing) + 16, int64(b.hist.Size)} {
		entries, err := b.rdb.XRevRangeN(ctx, b.histKey(uid), "+", "-", count).Result()
		if err != nil {
			return nil, false, err
		}
		items, complete, covered := historyAfter(entries, epoch, from.n, last, cutoff)
		if covered || int64(len(entries)) < count {
			return items, complete, nil
		}
	}
	return nil, false, nil
}

// historyAfter turns stream entries (newest first) into the items after
// n, oldest first. covered says the entries reach back to n+1: when they
// do not, either the window read was too short or history lost them.
// complete says the items run without a hole, none older than cutoff
// (ms), up to at least last.
func historyAfter(entries []redis.XMessage, epoch string, n, last uint64, cutoff int64) (items []qitem, complete, covered bool) {
	for i := len(entries) - 1; i >= 0; i-- { // oldest first
		e := entries[i]
		off, _ := strconv.ParseUint(fmt.Sprint(e.Values["o"]), 10, 64)
		if off <= n {
			covered = true
			continue
		}
		if off != n+uint64(len(items))+1 {
			if len(items) == 0 && !covered {
				return nil, false, false // starts after n+1
			}
			return nil, false, true // a hole
		}
		covered = true
		ms, _, _ := strings.Cut(e.ID, "-")
		if t, _ := strconv.ParseInt(ms, 10, 64); t < cutoff {
			return nil, false, true // too old to replay
		}
		d, _ := e.Values["d"].(string)
		m, err := decodeEnvelope(d)
		if err != nil {
			return nil, false, true
		}
		items = append(items, qitem{m: m, off: off, epoch: epoch, replay: true})
	}
	return items, covered && n+uint64(len(items)) >= last, covered
}

// repair delivers to uid's connections what this node was not subscribed
// for: after a lost pub/sub connection, what was published meanwhile; after
// a new subscription, what was published between the baseline read and
// the subscription taking effect. It delivers those messages from uid's
// history in Redis, then the ones held meanwhile, in offset order, without
// a duplicate. When history cannot fill a lost connection's gap, the uid's
// format=json connections are closed with 1012, so that they come back
// with since= and learn it ({"recovered": false}).
// repairLoop is the repairer: it repairs held uids away from the syncer,
// so that subscriptions never wait for it. It stops at Close.
func (b *RedisBroker) repairLoop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case <-b.workKick:
		}
		b.mu.Lock()
		var uids []string
		for uid := range b.repairing {
			uids = append(uids, uid)
		}
		b.mu.Unlock()
		for _, uid := range uids {
			if b.ctx.Err() != nil {
				return
			}
			b.repair(uid)
		}
	}
}

// takeBaselines records in base, for each channel about to be subscribed
// whose uid has no position here yet, the uid's current offset: the
// subscription starts after it, so what is published in between is what
// a repair fills in. A uid without a state in Redis starts at 0 of
// whatever epoch comes. On an error the uids get no baseline and their
// held messages are released without a fill.
func (b *RedisBroker) takeBaselines(ctx context.Context, channels []string) {
	var uids []string
	b.mu.Lock()
	for _, ch := range channels {
		if uid := strings.TrimPrefix(ch, b.prefix+"u:"); b.repairFrom(uid) == nil {
			uids = append(uids, uid)
		}
	}
	b.mu.Unlock()
	// Errors are logged; see above.
	_ = inBatches(uids, func(batch []string) error {
		pipe := b.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(batch))
		for i, uid := range batch {
			cmds[i] = pipe.HMGet(ctx, b.stateKey(uid), "e", "n")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			b.log.Warn("read the offsets of new subscriptions", "err", err)
			return err
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		for i, uid := range batch {
			if b.repairFrom(uid) != nil {
				continue
			}
			v := cmds[i].Val()
			epoch, _ := v[0].(string)
			n, _ := strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
			b.base[uid] = position{epoch, n}
		}
		return nil
	})
}

func (b *RedisBroker) repair(uid string) {
	ctx, cancel := context.WithTimeout(b.ctx, redisHealthInterval)
	defer cancel()
	b.mu.Lock()
	start := b.repairFrom(uid)
	_, held := b.repairing[uid]
	b.mu.Unlock()
	if !held {
		return
	}
	var items []qitem
	var err error
	ok := start != nil && b.hist.Size > 0
	if ok {
		if err = b.waitSubscribed(ctx, uid); err != nil {
			ok = false
		} else {
			items, ok, err = b.readSince(ctx, uid, *start)
		}
	}

	out := b.hub.getOutbox()
	defer b.hub.flush(out) // after the unlock: writes are system calls
	b.mu.Lock()
	defer b.mu.Unlock()
	st, still := b.repairing[uid]
	if !still {
		return // unsubscribed meanwhile
	}
	delete(b.repairing, uid)
	var done position
	if start != nil {
		done = *start
	}
	for _, it := range items {
		it.replay = false // live to the connections: they never had it
		b.deliverLocked(uid, it, out)
		done = position{it.epoch, it.off}
	}
	for _, it := range st.held {
		if ok && it.epoch == done.epoch && it.off <= done.n {
			continue // delivered from history just now
		}
		b.deliverLocked(uid, it, out)
	}
	if ok || !st.lost {
		return // a new subscription's fill that could not be made loses nothing it had
	}
	b.log.Warn("messages published during a redis outage could not be replayed", "uid", uid, "err", err)
	for _, c := range b.hub.clients(uid) {
		if c.json {
			c.close(websocket.CloseServiceRestart, "missed messages: reconnect with since", failClosed, false)
		}
	}
}

// waitSubscribed returns once Redis confirmed this node's subscription to
// uid's channel, or with ctx's error.
func (b *RedisBroker) waitSubscribed(ctx context.Context, uid string) error {
	ch := b.channel(uid)
	b.mu.Lock()
	if _, ok := b.confirmed[ch]; ok {
		b.mu.Unlock()
		return nil
	}
	w := make(chan struct{})
	b.waiters[ch] = append(b.waiters[ch], w)
	b.mu.Unlock()
	select {
	case <-w:
		return nil
	case <-b.stop:
		return errors.New("broker closed")
	case <-ctx.Done():
		b.mu.Lock()
		ws := b.waiters[ch]
		if i := slices.Index(ws, w); i >= 0 {
			b.waiters[ch] = slices.Delete(ws, i, i+1)
			if len(b.waiters[ch]) == 0 {
				delete(b.waiters, ch)
			}
		}
		b.mu.Unlock()
		return ctx.Err()
	}
}

// The envelope of a message in Redis: message id, accept time in Unix
// nanoseconds and the message, separated by '|' (the first two never
// contain one).
func encodeEnvelope(m *Message) string {
	var sb strings.Builder
	sb.Grow(len(m.ID) + 22 + len(m.Data))
	sb.WriteString(m.ID)
	sb.WriteByte('|')
	sb.WriteString(strconv.FormatInt(m.Accepted.UnixNano(), 10))
	sb.WriteByte('|')
	sb.Write(m.Data)
	return sb.String()
}

func decodeEnvelope(s string) (*Message, error) {
	id, rest, ok1 := strings.Cut(s, "|")
	ts, body, ok2 := strings.Cut(rest, "|")
	if !ok1 || !ok2 {
		return nil, errors.New("want id|time|message")
	}
	nanos, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("time %q: %w", ts, err)
	}
	return newMessage(id, StringToBytes(body), time.Unix(0, nanos)), nil
}
