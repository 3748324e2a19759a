package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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
// went out, p = "<deadline ms>|<left ms>" while its offline is held
// back, q = the number of the uid's last event and d = the number of the
// last one a webhook receiver took (or that was given up), so that a
// node holds an event back until the one before it, perhaps another
// node's, is delivered: per uid the receiver gets them in order. A node's first connection of a uid runs arriveScript (the node
// whose run finds s unset sends online); its last runs leaveScript (the
// run that finds no node left sets p and queues the uid in the sorted set
// <prefix>:pending, scored by the deadline). Every node, every beat,
// expires the due uids of <prefix>:pending with expireScript: the run
// that finds p still set and no node back clears s and p and sends
// offline; the hash, with q and d, expires presenceKeep later unless the
// uid comes back. A node that dies without its connections closing is pruned
// from the nodes hash by one node's beat (registerScript), which then
// sweeps the uids of its set <prefix>:pn:<node>: their offline is due at
// once where no other node has a connection.

const (
	// arriveScript: KEYS the uid's hash; ARGV the node. The online's
	// number: send it; 0: nothing to send. ARGV[2] is the transition's
	// token: a retry of the same one (its answer was lost) answers the
	// same number again.
	arriveScript = `
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('HDEL', KEYS[1], 'p')
if redis.call('HGET', KEYS[1], 's') == 'on' then
  if redis.call('HGET', KEYS[1], 'a') == ARGV[2] then return tonumber(redis.call('HGET', KEYS[1], 'q')) end
  return 0
end
redis.call('HSET', KEYS[1], 's', 'on', 'a', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'q', 1)
`
	// leaveScript: KEYS the uid's hash; ARGV the node, the deadline and
	// the time left (ms). The uid has no connection left anywhere and its
	// offline is held back: its due (ms), to queue (again, on a retry
	// whose first answer was lost); 0: nothing to queue.
	leaveScript = heldLua + `
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
return held(ARGV[2] .. '|' .. ARGV[3])
`
	// heldLua defines held(p): 0 while some node has a connection of the
	// uid or its online never went out; else its held-back offline's due,
	// p set if there was none.
	heldLua = `
local function held(p)
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'n:' then return 0 end
  end
  if redis.call('HGET', KEYS[1], 's') ~= 'on' then return 0 end
  local cur = redis.call('HGET', KEYS[1], 'p')
  if not cur then
    redis.call('HSET', KEYS[1], 'p', p)
    cur = p
  end
  return tonumber(string.sub(cur, 1, string.find(cur, '|', 1, true) - 1))
end
`
	// expireScript: KEYS the uid's hash; ARGV now (ms), presenceKeep
	// (ms). {the time the uid left (ms), the offline's number}: send it;
	// {0}: nothing (it came back); {-1, due (ms)}: not due yet (a later
	// leave moved it).
	expireScript = `
local p = redis.call('HGET', KEYS[1], 'p')
if not p then return {0} end
local bar = string.find(p, '|', 1, true)
local due = tonumber(string.sub(p, 1, bar - 1))
if due > tonumber(ARGV[1]) then return {-1, due} end
redis.call('HDEL', KEYS[1], 's', 'a', 'p')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {tonumber(string.sub(p, bar + 1)), redis.call('HINCRBY', KEYS[1], 'q', 1)}
`
	// deliveredScript: KEYS the uid's hash; ARGV an event's number. It
	// records that the receiver took it (or it was given up).
	deliveredScript = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local d = tonumber(redis.call('HGET', KEYS[1], 'd') or '0')
if tonumber(ARGV[1]) > d then redis.call('HSET', KEYS[1], 'd', ARGV[1]) end
return 0
`
	// sweepScript: KEYS the uid's hash; ARGV the dead node, now (ms). As
	// leaveScript: the due to queue, now for a new one; 0: nothing. The
	// uid's events so far count as delivered: what the dead node had not
	// delivered died with it, and the next event must not wait for it.
	sweepScript = heldLua + `
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
local q = tonumber(redis.call('HGET', KEYS[1], 'q') or '0')
if q > tonumber(redis.call('HGET', KEYS[1], 'd') or '0') then redis.call('HSET', KEYS[1], 'd', q) end
return held(ARGV[2] .. '|' .. ARGV[2])
`
)

// zremIfScript removes member ARGV[1] of the sorted set KEYS[1] if its
// score is still ARGV[2].
const zremIfScript = `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`

// presenceKeep is how long a uid's event numbers outlive its offline:
// past it, an event of the uid is numbered from 1 again, which only a
// delivery held up for longer could confuse.
const presenceKeep = 24 * time.Hour

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

// PresenceEvent is a transition this node must send: the Seq-th event of
// the uid.
type PresenceEvent struct {
	Online bool
	UID    string
	At     time.Time
	Seq    int64
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

// Arrive records this node's first connection of uid, as the transition
// token (the same on a retry). When the uid went online (this node sends
// the event) it returns the event's number, else 0.
func (b *Broker) Arrive(ctx context.Context, uid, token string) (int64, error) {
	rdb, err := b.uidClient(uid)
	if err != nil {
		return 0, err
	}
	nrdb, err := b.client(b.nodeUIDsKey(b.nodeID))
	if err != nil {
		return 0, err
	}
	// The set first: a node that dies after it has a uid it does not
	// hold, which its sweep skips.
	if err := nrdb.SAdd(ctx, b.nodeUIDsKey(b.nodeID), uid).Err(); err != nil {
		return 0, fmt.Errorf("redis presence: %w", err)
	}
	seq, err := arrive.Run(ctx, rdb, []string{b.presenceKey(uid)}, b.nodeID, token).Int64()
	if err != nil {
		return 0, fmt.Errorf("redis presence: %w", err)
	}
	return seq, nil
}

// Delivered returns, per uid, the number of its last event a webhook
// receiver took (or that was given up): 0 for none. One round trip per
// master.
func (b *Broker) Delivered(ctx context.Context, uids []string) (map[string]int64, error) {
	out := make(map[string]int64, len(uids))
	order, groups := b.byShard(uids)
	for _, s := range order {
		if s.rdb == nil {
			b.kickTopology()
			return nil, errNoMaster
		}
		group := groups[s]
		cmds := make([]*redis.StringCmd, len(group))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, uid := range group {
				cmds[i] = p.HGet(ctx, b.presenceKey(uid), "d")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("redis presence: %w", err)
		}
		for i, uid := range group {
			n, err := cmds[i].Int64()
			if err != nil && !errors.Is(err, redis.Nil) {
				return nil, fmt.Errorf("redis presence: %w", err)
			}
			out[uid] = n
		}
	}
	return out, nil
}

// MarkDelivered records that a webhook receiver took the events seqs[i]
// of uids[i] (or that they were given up): the uids' next events may go.
func (b *Broker) MarkDelivered(ctx context.Context, uids []string, seqs []int64) error {
	idx := make(map[string][]int, len(uids))
	for i, uid := range uids {
		idx[uid] = append(idx[uid], i)
	}
	order, groups := b.byShard(slices.Collect(maps.Keys(idx)))
	for _, s := range order {
		if s.rdb == nil {
			b.kickTopology()
			return errNoMaster
		}
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, uid := range groups[s] {
				for _, i := range idx[uid] {
					p.Eval(ctx, deliveredScript, []string{b.presenceKey(uid)}, seqs[i])
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("redis presence: %w", err)
		}
	}
	return nil
}

// Leave records that this node's last connection of uid left at left;
// the offline, if it comes to that, is due after delay.
func (b *Broker) Leave(ctx context.Context, uid string, left time.Time, delay time.Duration) error {
	rdb, err := b.uidClient(uid)
	if err != nil {
		return err
	}
	due := left.Add(delay)
	ms, err := leave.Run(ctx, rdb, []string{b.presenceKey(uid)}, b.nodeID, due.UnixMilli(), left.UnixMilli()).Int64()
	if err != nil {
		return fmt.Errorf("redis presence: %w", err)
	}
	if ms > 0 {
		if err := b.queuePending(ctx, uid, time.UnixMilli(ms)); err != nil {
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

// presenceBeat hands the nodes this beat forgot to the presence loop:
// their uids are swept there, away from the beats.
func (b *Broker) presenceBeat(dead []string) {
	if len(dead) == 0 {
		return
	}
	b.mu.Lock()
	for _, node := range dead {
		b.toSweep[node] = struct{}{}
	}
	b.mu.Unlock()
}

// presenceLoop, every beat until Close, sweeps the uids of the dead nodes
// this node forgot (each until done: a sweep cut short goes on at the
// next pass) and sends the offlines that are due.
func (b *Broker) presenceLoop() {
	defer close(b.presenceDone)
	t := time.NewTicker(nodeBeat)
	defer t.Stop()
	for {
		select {
		case <-b.presenceStop:
			return
		case <-t.C:
		}
		f := b.presenceFunc()
		if f == nil {
			continue
		}
		b.mu.Lock()
		nodes := slices.Collect(maps.Keys(b.toSweep))
		b.mu.Unlock()
		for _, node := range nodes {
			ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
			err := b.sweepNode(ctx, node)
			cancel()
			if err != nil {
				b.log.Warn("redis presence: sweep of a dead node; again at the next beat", "node", node, "err", err)
				continue
			}
			b.mu.Lock()
			delete(b.toSweep, node)
			b.mu.Unlock()
		}
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		// A mass offline (a node's thousands of users gone at once) is
		// worked off in batches for up to half a beat, not one batch a
		// beat.
		for budget := time.Now().Add(nodeBeat / 2); ; {
			n, err := b.expireDue(ctx, f)
			if err != nil && b.ctx.Err() == nil {
				b.log.Debug("redis presence: expire", "err", err)
			}
			if err != nil || n < redisBatch || time.Now().After(budget) {
				break
			}
		}
		cancel()
	}
}

// StopPresence stops this node's part in sending the cluster's due
// offlines (and sweeping dead nodes), and waits until what it was doing
// is done: a shutdown then flushes the webhook knowing nothing more comes,
// while Redis is still there for its delivery marks. The nodes that stay
// send the offlines that fall due after.
func (b *Broker) StopPresence() {
	b.presenceOnce.Do(func() { close(b.presenceStop) })
	b.mu.Lock()
	started := b.started
	b.mu.Unlock()
	if started {
		<-b.presenceDone
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
		ms, err := sweep.Run(ctx, urdb, []string{b.presenceKey(uid)}, node, now.UnixMilli()).Int64()
		if err != nil {
			return err
		}
		if ms > 0 {
			if err := b.queuePending(ctx, uid, time.UnixMilli(ms)); err != nil {
				return err
			}
		}
		// Done with uid: a sweep cut short goes on from the rest.
		if err := rdb.SRem(ctx, key, uid).Err(); err != nil {
			return err
		}
	}
	return nil
}

// expireDue sends the offlines that are due, up to redisBatch of them,
// each by the one node whose expireScript took it. It returns how many
// were due.
func (b *Broker) expireDue(ctx context.Context, f func(PresenceEvent)) (int, error) {
	rdb, err := b.client(b.pendingKey())
	if err != nil {
		return 0, err
	}
	now := time.Now()
	due, err := rdb.ZRangeByScoreWithScores(ctx, b.pendingKey(), &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: redisBatch}).Result()
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, z := range due {
		uid, _ := z.Member.(string)
		urdb, err := b.uidClient(uid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res, err := expire.Run(ctx, urdb, []string{b.presenceKey(uid)}, now.UnixMilli(), presenceKeep.Milliseconds()).Int64Slice()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if res[0] == -1 {
			// A later leave moved it. Its own queueing normally moved the
			// entry too; if that was lost, the entry would come back at
			// every beat ahead of the others: it goes where it is due.
			if len(res) == 2 {
				if err := rdb.ZAddXX(ctx, b.pendingKey(), redis.Z{Score: float64(res[1]), Member: uid}).Err(); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if res[0] > 0 && len(res) == 2 {
			f(PresenceEvent{UID: uid, At: time.UnixMilli(res[0]), Seq: res[1]}) // before anything else can fail
		}
		// Only the entry read: a leave since then queued a new one.
		if err := zremIf.Run(ctx, rdb, []string{b.pendingKey()}, uid, z.Score).Err(); err != nil {
			errs = append(errs, err)
		}
	}
	return len(due), errors.Join(errs...)
}

// nodeUIDs counts the uids this node still has presence for.
func (b *Broker) nodeUIDs(ctx context.Context) (int64, error) {
	rdb, err := b.client(b.nodeUIDsKey(b.nodeID))
	if err != nil {
		return 0, err
	}
	return rdb.SCard(ctx, b.nodeUIDsKey(b.nodeID)).Result()
}
