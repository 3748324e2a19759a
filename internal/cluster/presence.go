package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is presence across the cluster: which uids are online (some
// node has a connection) as the webhook last said, so that each online
// and offline transition is sent by exactly one node.
//
// Per uid, in its slot, the hash <prefix>:pr:{uid} holds a field n:<node>
// for each node with a connection of the uid, s = "on" once its online
// went out, and p = "<deadline ms>|<left ms>" while its offline is held
// back. A node's first connection of a uid runs arriveScript (the node
// whose run finds s unset sends online); its last runs leaveScript (the
// run that finds no node left sets p and queues the uid in the sorted set
// <prefix>:pending, scored by the deadline). Every node, every beat,
// expires the due uids of <prefix>:pending with expireScript: the run
// that finds p still set and no node back deletes the hash and sends
// offline. A node that dies without its connections closing is pruned
// from the nodes hash by one node's beat (registerScript), which then
// sweeps the uids of its set <prefix>:pn:<node>: their offline is due at
// once where no other node has a connection.

const (
	// arriveScript: KEYS the uid's hash; ARGV the node. 1: send online.
	arriveScript = `
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('HDEL', KEYS[1], 'p')
if redis.call('HGET', KEYS[1], 's') == 'on' then return 0 end
redis.call('HSET', KEYS[1], 's', 'on')
return 1
`
	// leaveScript: KEYS the uid's hash; ARGV the node, the deadline and
	// the time left (ms). 1: the uid has no connection left anywhere and
	// its offline is now held back (queue it).
	leaveScript = `
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'n:' then return 0 end
end
if redis.call('HGET', KEYS[1], 's') ~= 'on' or redis.call('HEXISTS', KEYS[1], 'p') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[2] .. '|' .. ARGV[3])
return 1
`
	// expireScript: KEYS the uid's hash; ARGV now (ms). The time the uid
	// left (ms): send offline; 0: nothing (it came back, or not due).
	expireScript = `
local p = redis.call('HGET', KEYS[1], 'p')
if not p then return 0 end
local bar = string.find(p, '|', 1, true)
if tonumber(string.sub(p, 1, bar - 1)) > tonumber(ARGV[1]) then return -1 end
redis.call('DEL', KEYS[1])
return tonumber(string.sub(p, bar + 1))
`
	// sweepScript: KEYS the uid's hash; ARGV the dead node, now (ms). 1:
	// its offline is due now (queue it).
	sweepScript = `
if redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1]) == 0 then return 0 end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'n:' then return 0 end
end
if redis.call('HGET', KEYS[1], 's') ~= 'on' or redis.call('HEXISTS', KEYS[1], 'p') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[2] .. '|' .. ARGV[2])
return 1
`
)

// zremIfScript removes member ARGV[1] of the sorted set KEYS[1] if its
// score is still ARGV[2].
const zremIfScript = `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`

var (
	zremIf = redis.NewScript(zremIfScript)
	arrive = redis.NewScript(arriveScript)
	leave  = redis.NewScript(leaveScript)
	expire = redis.NewScript(expireScript)
	sweep  = redis.NewScript(sweepScript)
)

func (b *Broker) presenceKey(uid string) string { return b.prefix + "pr:" + b.tag(uid) }
func (b *Broker) pendingKey() string            { return b.prefix + "pending" }
func (b *Broker) nodeUIDsKey(node string) string {
	return b.prefix + "pn:" + node
}

// PresenceEvent is a transition this node must send.
type PresenceEvent struct {
	Online bool
	UID    string
	At     time.Time
}

// OnPresence sets where the transitions this node must send go (the
// presence webhook); nil: presence is not kept.
func (b *Broker) OnPresence(f func(PresenceEvent)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onPresence = f
}

func (b *Broker) presenceFunc() func(PresenceEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.onPresence
}

// Arrive records this node's first connection of uid. It reports whether
// the uid went online (this node sends the event).
func (b *Broker) Arrive(ctx context.Context, uid string) (bool, error) {
	rdb, err := b.uidClient(uid)
	if err != nil {
		return false, err
	}
	nrdb, err := b.client(b.nodeUIDsKey(b.nodeID))
	if err != nil {
		return false, err
	}
	// The set first: a node that dies after it has a uid it does not
	// hold, which its sweep skips.
	if err := nrdb.SAdd(ctx, b.nodeUIDsKey(b.nodeID), uid).Err(); err != nil {
		return false, fmt.Errorf("redis presence: %w", err)
	}
	n, err := arrive.Run(ctx, rdb, []string{b.presenceKey(uid)}, b.nodeID).Int()
	if err != nil {
		return false, fmt.Errorf("redis presence: %w", err)
	}
	return n == 1, nil
}

// Leave records that this node's last connection of uid left at left;
// the offline, if it comes to that, is due after delay.
func (b *Broker) Leave(ctx context.Context, uid string, left time.Time, delay time.Duration) error {
	rdb, err := b.uidClient(uid)
	if err != nil {
		return err
	}
	due := left.Add(delay)
	n, err := leave.Run(ctx, rdb, []string{b.presenceKey(uid)}, b.nodeID, due.UnixMilli(), left.UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("redis presence: %w", err)
	}
	if n == 1 {
		if err := b.queuePending(ctx, uid, due); err != nil {
			return err
		}
	}
	nrdb, err := b.client(b.nodeUIDsKey(b.nodeID))
	if err == nil {
		err = nrdb.SRem(ctx, b.nodeUIDsKey(b.nodeID), uid).Err()
	}
	if err != nil {
		return fmt.Errorf("redis presence: %w", err)
	}
	return nil
}

func (b *Broker) queuePending(ctx context.Context, uid string, due time.Time) error {
	rdb, err := b.client(b.pendingKey())
	if err == nil {
		err = rdb.ZAdd(ctx, b.pendingKey(), redis.Z{Score: float64(due.UnixMilli()), Member: uid}).Err()
	}
	if err != nil {
		return fmt.Errorf("redis presence: %w", err)
	}
	return nil
}

// presenceBeat sweeps the uids of dead nodes and expires the due
// offlines: one beat's presence work.
func (b *Broker) presenceBeat(ctx context.Context, dead []string) {
	f := b.presenceFunc()
	if f == nil {
		return
	}
	for _, node := range dead {
		if err := b.sweepNode(ctx, node); err != nil {
			b.log.Warn("redis presence: sweep of a dead node", "node", node, "err", err)
		}
	}
	if err := b.expireDue(ctx, f); err != nil && !errors.Is(err, context.Canceled) {
		b.log.Debug("redis presence: expire", "err", err)
	}
}

// sweepNode makes the offline of node's uids due now where no other node
// has a connection.
func (b *Broker) sweepNode(ctx context.Context, node string) error {
	key := b.nodeUIDsKey(node)
	rdb, err := b.client(key)
	if err != nil {
		return err
	}
	uids, err := rdb.SMembers(ctx, key).Result()
	if err != nil {
		return err
	}
	now := time.Now()
	for _, uid := range uids {
		urdb, err := b.uidClient(uid)
		if err != nil {
			return err
		}
		n, err := sweep.Run(ctx, urdb, []string{b.presenceKey(uid)}, node, now.UnixMilli()).Int()
		if err != nil {
			return err
		}
		if n == 1 {
			if err := b.queuePending(ctx, uid, now); err != nil {
				return err
			}
		}
	}
	return rdb.Del(ctx, key).Err()
}

// expireDue sends the offlines that are due, each by the one node whose
// expireScript took it.
func (b *Broker) expireDue(ctx context.Context, f func(PresenceEvent)) error {
	rdb, err := b.client(b.pendingKey())
	if err != nil {
		return err
	}
	now := time.Now()
	due, err := rdb.ZRangeByScoreWithScores(ctx, b.pendingKey(), &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: redisBatch}).Result()
	if err != nil {
		return err
	}
	for _, z := range due {
		uid, _ := z.Member.(string)
		urdb, err := b.uidClient(uid)
		if err != nil {
			return err
		}
		left, err := expire.Run(ctx, urdb, []string{b.presenceKey(uid)}, now.UnixMilli()).Int64()
		if err != nil {
			return err
		}
		if left == -1 {
			continue // a later leave moved it: its own entry comes
		}
		// Only the entry read: a leave since then queued a new one.
		if err := zremIf.Run(ctx, rdb, []string{b.pendingKey()}, uid, z.Score).Err(); err != nil {
			return err
		}
		if left > 0 {
			f(PresenceEvent{UID: uid, At: time.UnixMilli(left)})
		}
	}
	return nil
}
