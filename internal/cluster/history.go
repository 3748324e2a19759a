package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
)

// This file is the history half of the broker: since= replays read
// from the uids' history in Redis.

// Replay returns what a connection of uid that saw everything up to since
// missed, and whether history holds all of it. It waits until this node's subscription to uid is
// in place (so that everything newer arrives live), then read the uid's
// state and history from Redis.
func (b *Broker) Replay(ctx context.Context, uid string, since stream.Position) ([]stream.Item, bool) {
	if b.cfg.HistorySize == 0 {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, healthInterval)
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
func (b *Broker) readSince(ctx context.Context, uid string, from stream.Position) ([]stream.Item, bool, error) {
	if b.cfg.HistorySize == 0 {
		return nil, false, nil
	}
	rdb, err := b.uidClient(uid)
	if err != nil {
		return nil, false, err
	}
	var state *redis.SliceCmd
	var now *redis.TimeCmd
	_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		state = p.HMGet(ctx, b.stateKey(uid), "e", "n")
		now = p.Time(ctx)
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	epoch, _ := state.Val()[0].(string)
	last, _ := strconv.ParseUint(fmt.Sprint(state.Val()[1]), 10, 64)
	if from.Epoch == "" && from.N == 0 {
		from.Epoch = epoch // a baseline taken before the uid had a state
	}
	if epoch != from.Epoch || from.N > last {
		return nil, false, nil
	}
	missing := last - from.N
	if missing == 0 {
		return nil, true, nil
	}
	if missing > uint64(b.cfg.HistorySize) {
		return nil, false, nil
	}
	// Newest first; messages published since the state was read come on
	// top, hence the margin, and once more with the whole stream.
	cutoff := now.Val().Add(-b.cfg.HistoryTTL).UnixMilli()
	for _, count := range []int64{int64(missing) + 16, int64(b.cfg.HistorySize)} {
		entries, err := rdb.XRevRangeN(ctx, b.histKey(uid), "+", "-", count).Result()
		if err != nil {
			return nil, false, err
		}
		items, complete, covered := historyAfter(entries, epoch, from.N, last, cutoff)
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
func historyAfter(entries []redis.XMessage, epoch string, n, last uint64, cutoff int64) (items []stream.Item, complete, covered bool) {
	for _, e := range slices.Backward(entries) { // oldest first
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
		items = append(items, stream.Item{M: m, Off: off, Epoch: epoch, Replay: true})
	}
	return items, covered && n+uint64(len(items)) >= last, covered
}
