package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
)

// This file is the repair: after a lost pub/sub connection or a new
// subscription, a uid's messages from Redis are held until what this node
// missed is delivered from history.

// repairLoop is the repairer: it repairs held uids away from the syncer,
// so that subscriptions never wait for it. It stops at Close.
func (b *Broker) repairLoop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case <-b.workKick:
		}
		// Only uids whose subscription is in place: one whose master is
		// down (or whose subscription is on its way) waits for it, without
		// holding up the others.
		b.mu.Lock()
		var uids []string
		for uid := range b.repairing {
			if _, ok := b.confirmed[b.channel(uid)]; ok {
				uids = append(uids, uid)
			}
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
//
// A uid whose connection registered after Expect has its baseline already
// (from before the registration: UserOnline turned the expectation into
// it), so it is not read again here.
func (b *Broker) takeBaselines(ctx context.Context, channels []string) {
	var uids []string
	b.mu.Lock()
	for _, ch := range channels {
		uid, ok := b.uidOf(ch)
		if !ok || b.repairFrom(uid) != nil {
			continue
		}
		uids = append(uids, uid)
	}
	b.mu.Unlock()
	// Errors are logged; see above.
	order, groups := b.byShard(uids)
	for _, s := range order {
		if s.rdb == nil {
			continue // no master: held until the move, and read then
		}
		_ = inBatches(groups[s], func(batch []string) error { return b.readBaselines(ctx, s, batch) })
	}
}

// readBaselines records the current offsets of batch, uids of s.
func (b *Broker) readBaselines(ctx context.Context, s *shard, batch []string) error {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(batch))
	for i, uid := range batch {
		cmds[i] = pipe.HMGet(ctx, b.stateKey(uid), "e", "n")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		b.log.Warn("read the offsets of new subscriptions", "redis", s.addr, "err", err)
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, uid := range batch {
		if b.repairFrom(uid) != nil {
			continue
		}
		b.base[uid] = offsetOf(cmds[i].Val())
	}
	return nil
}

// expectation is a uid's offset read just before a connection of it
// registered here (Expect).
type expectation struct {
	pos stream.Position
	at  time.Time
}

// maxExpectationAge: an expectation whose connection has not registered
// within it never will (a refused registration); the syncer forgets it.
const maxExpectationAge = healthInterval

// Expect is called before a connection of uid registers on this node.
// When uid has no open connection here, it reads uid's current offset
// (one Redis round trip): the subscription that the registration brings
// starts from there, so that a message published after the registration
// and before the subscription takes effect is repaired from history
// rather than lost. (One published between this read and the
// registration reaches the connection too.) On an error the subscription
// reads its baseline later, as it would without Expect.
func (b *Broker) Expect(ctx context.Context, uid string) {
	b.mu.Lock()
	_, subscribed := b.confirmed[b.channel(uid)]
	_, changing := b.pending[uid]
	b.mu.Unlock()
	if subscribed && !changing {
		return // everything published for uid reaches this node already
	}
	ctx, cancel := context.WithTimeout(ctx, healthInterval)
	defer cancel()
	rdb, err := b.uidClient(uid)
	if err != nil {
		b.log.Warn("read the offset of a connecting uid", "uid", uid, "err", err)
		return
	}
	v, err := rdb.HMGet(ctx, b.stateKey(uid), "e", "n").Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		b.log.Warn("read the offset of a connecting uid", "uid", uid, "err", err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expected[uid] = expectation{offsetOf(v), time.Now()}
}

// offsetOf reads an HMGET of a uid's state hash ("e", "n"). A uid
// without a state starts at 0 of whatever epoch comes.
func offsetOf(v []any) stream.Position {
	if len(v) != 2 {
		return stream.Position{}
	}
	epoch, _ := v[0].(string)
	n, _ := strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
	return stream.Position{Epoch: epoch, N: n}
}

// repair delivers to uid's connections what this node was not subscribed
// for: after a lost pub/sub connection, what was published meanwhile; after
// a new subscription, what was published between the baseline read and
// the subscription taking effect. It delivers those messages from uid's
// history in Redis, then the ones held meanwhile, in offset order, without
// a duplicate. When history cannot fill a lost connection's gap, the uid's
// format=json connections are closed with 1012, so that they come back
// with since= and learn it ({"recovered": false}).
func (b *Broker) repair(uid string) {
	ctx, cancel := context.WithTimeout(b.ctx, healthInterval)
	defer cancel()
	b.mu.Lock()
	start := b.repairFrom(uid)
	_, held := b.repairing[uid]
	b.mu.Unlock()
	if !held {
		return
	}
	var items []stream.Item
	var err error
	ok := start != nil && b.cfg.HistorySize > 0
	if ok {
		if err = b.waitSubscribed(ctx, uid); err != nil {
			ok = false
		} else {
			items, ok, err = b.readSince(ctx, uid, *start)
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	st, still := b.repairing[uid]
	if !still {
		return // unsubscribed meanwhile
	}
	delete(b.repairing, uid)
	var done stream.Position
	if start != nil {
		done = *start
	}
	if !ok {
		// History could not say what was missed: it may even be behind
		// what was delivered here (a failover lost a message that went
		// out live but was never acknowledged). Later offsets are taken
		// as they come.
		delete(b.last, uid)
	}
	for _, it := range items {
		it.Replay = false // live to the connections: they never had it
		b.deliverLocked(uid, it)
		done = it.Pos()
	}
	for _, it := range st.held {
		if ok && it.Epoch == done.Epoch && it.Off <= done.N {
			continue // delivered from history just now
		}
		b.deliverLocked(uid, it)
	}
	if ok || !st.lost {
		return // a new subscription's fill that could not be made loses nothing it had
	}
	b.log.Warn("messages published during a redis outage could not be replayed", "uid", uid, "err", err)
	b.local.Resync(uid)
}

// waitSubscribed returns once Redis confirmed this node's subscription to
// uid's channel, or with ctx's error.
func (b *Broker) waitSubscribed(ctx context.Context, uid string) error {
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
