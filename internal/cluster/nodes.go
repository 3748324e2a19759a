package cluster

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file tells a uid that is offline from one whose node is
// resubscribing. After a lost pub/sub connection (a Redis restart, a
// network cut) a node subscribes to its uids' channels again, and until it
// has, those uids have no subscriber: a /send to one would be a 404,
// "nobody will get this", while its user is connected.
//
// So each node also subscribes to a channel of its own,
// <prefix>:n:<node id>, on the same pub/sub connection and after every
// uid channel: Redis runs a connection's commands in order, so the node
// channel has a subscriber only while the connection is up and every uid
// SUBSCRIBE before it took effect, and it has none the moment the
// connection drops. Nodes register in the hash <prefix>:nodes (node id →
// Redis time of their last beat, every nodeBeat). When a lookup finds an
// offline uid, it asks whether some registered node's channel has no
// subscriber; if so the answer is not known (ErrResyncing, a 503 the
// backend retries) rather than a 404. A node that leaves unregisters
// first; one that died is forgotten nodeDeadAfter after its last beat,
// and until then offline uids are uncertain too.

const (
	nodeBeat      = time.Second
	nodeDeadAfter = 10 * time.Second
)

// NodeDeadAfter is how long after its last beat a node that died without
// leaving (SIGKILL, a lost machine) is forgotten: until then the uids
// without a subscriber answer 503, not 404 (it may be resubscribing).
const NodeDeadAfter = nodeDeadAfter

// ErrResyncing is a lookup's error when some uids have no subscriber and
// a node of the cluster is (re)subscribing: they may be connected there.
var ErrResyncing = errors.New("a node of the cluster is resubscribing its connections: which uids are online is not known yet")

// registerScript records node ARGV[1] as alive at Redis's time, forgets
// the nodes not heard of for ARGV[2] ms, and returns the ids of the
// others, then "|", then the ids it forgot (this caller sweeps their
// presence: presence.go), then "|new" if the caller was not registered
// (its first beat, or Redis forgot it). KEYS: the nodes hash.
const registerScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A caller that could not beat for deadAfter itself (a Redis outage, a
-- cut) forgets nobody: the others could not beat either.
local prev = redis.call('HGET', KEYS[1], ARGV[1])
local prune = prev and now - tonumber(prev) <= tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], now)
local all = redis.call('HGETALL', KEYS[1])
local ids, dead = {}, {}
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) <= tonumber(ARGV[2]) then
    ids[#ids + 1] = all[i]
  elseif prune then
    redis.call('HDEL', KEYS[1], all[i])
    dead[#dead + 1] = all[i]
  else
    ids[#ids + 1] = all[i]
  end
end
ids[#ids + 1] = '|'
for _, id in ipairs(dead) do ids[#ids + 1] = id end
if not prev then ids[#ids + 1] = '|new' end
return ids
`

// unsureListLua defines unsureOf(prefix, from, to): the number of nodes
// ARGV[from..to] whose channel has no subscriber on this master. On a
// Redis Cluster the nodes hash lives in a slot of its own, out of a
// script's reach, so the script is given the nodes registered at the
// caller's last beat; each node's pub/sub connection to a master
// subscribes its node channel there after that master's uid channels.
const unsureListLua = `
local function unsureOf(prefix, from, to)
  local n = 0
  for i = from, to do
    local subs = redis.call('PUBSUB', 'NUMSUB', prefix .. ARGV[i])
    if tonumber(subs[2]) == 0 then n = n + 1 end
  end
  return n
end
`

// lookupClusterScript is lookupScript on a Redis Cluster master. ARGV:
// the prefix of node channels, the number k of node ids, the node ids,
// then the channels.
const lookupClusterScript = unsureListLua + countedLua + `
local k = tonumber(ARGV[2])
local out, offline = counted(redis.call('PUBSUB', 'SHARDNUMSUB', unpack(ARGV, 3 + k)))
if offline then out[1] = unsureOf(ARGV[1], 3, 2 + k) end
return out
`

// countedLua defines counted(numsub): a NUMSUB's counts as {0, count...}
// (the first left for the node check), and whether one is 0.
const countedLua = `
local function counted(numsub)
  local out, offline = {0}, false
  for i = 2, #numsub, 2 do
    local c = tonumber(numsub[i])
    out[#out + 1] = c
    if c == 0 then offline = true end
  end
  return out, offline
end
`

// unsureLua defines unsure(nodes, prefix, deadAfter): the number of
// registered nodes whose channel has no subscriber, forgetting those not
// heard of for deadAfter ms. The lookup and the publish script run it in
// the same step as their own PUBSUB NUMSUB, so that a node cannot come
// and go between the two answers.
const unsureLua = `
local function unsure(nodes, prefix, deadAfter)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local all = redis.call('HGETALL', nodes)
  local n = 0
  for i = 1, #all, 2 do
    if now - tonumber(all[i + 1]) > tonumber(deadAfter) then
      redis.call('HDEL', nodes, all[i])
    else
      local subs = redis.call('PUBSUB', 'NUMSUB', prefix .. all[i])
      if tonumber(subs[2]) == 0 then n = n + 1 end
    end
  end
  return n
end
`

// lookupScript counts the subscribers of channels ARGV[3..] and, when
// one has none, whether some node is resubscribing: {unsure, count...}.
// KEYS: the nodes hash. ARGV: the prefix of node channels, the dead-after
// ms, the channels.
const lookupScript = unsureLua + countedLua + `
local out, offline = counted(redis.call('PUBSUB', 'NUMSUB', unpack(ARGV, 3)))
if offline then out[1] = unsure(KEYS[1], ARGV[1], ARGV[2]) end
return out
`

var (
	register      = redis.NewScript(registerScript)
	lookup        = redis.NewScript(lookupScript)
	lookupCluster = redis.NewScript(lookupClusterScript)
)

func (b *Broker) nodeChannel() string { return b.prefix + "n:" + b.nodeID }
func (b *Broker) nodesKey() string    { return b.prefix + "nodes" }

// beatLoop registers this node every nodeBeat, until Close stops it
// (beatStop). The first registration waits until the node channel is
// subscribed, so that a starting node makes nobody unsure; after that
// the node beats whether its pub/sub connection is up or not, so that
// after a Redis restart that lost the hash, or a cut longer than
// nodeDeadAfter, it is registered again within a beat of reaching Redis,
// and until it has resubscribed others answer 503, not 404.
func (b *Broker) beatLoop() {
	defer close(b.beatDone)
	t := time.NewTicker(nodeBeat)
	defer t.Stop()
	started := false
	for {
		select {
		case <-b.beatStop:
			return
		case <-t.C:
		case <-b.beatKick:
		}
		started = started || b.nodeUpEverywhere()
		if !started {
			continue
		}
		ctx, cancel := context.WithTimeout(b.ctx, nodeBeat)
		b.beat(ctx)
		cancel()
	}
}

// unregister stops the beats and takes this node out of the nodes hash,
// so that its leaving does not make other nodes' offline uids uncertain.
// The beats stop first: one in flight could register the node again.
func (b *Broker) unregister(ctx context.Context) {
	close(b.beatStop)
	if !b.beating {
		return // never started, never registered
	}
	select {
	case <-b.beatDone:
	case <-ctx.Done():
		// A beat stuck on a hung Redis: it ends with the client's read
		// timeout, and Close waits for it with the other goroutines.
		return
	}
	if b.presenceFunc() != nil {
		// Presence: a node whose users did not all leave (its drain was
		// cut short) stays registered, so that other nodes forget it
		// after nodeDeadAfter and sweep them.
		if n, err := b.nodeUIDs(ctx); err != nil || n > 0 {
			b.log.Info("redis: left registered, for the presence of its users to be swept", "uids", n, "after", nodeDeadAfter, "err", err)
			return
		}
	}
	rdb, err := b.client(b.nodesKey())
	if err == nil {
		err = rdb.HDel(ctx, b.nodesKey(), b.nodeID).Err()
	}
	if err != nil {
		b.log.Warn("redis unregister node failed: other nodes forget it by themselves", "after", nodeDeadAfter, "err", err)
	}
}

// beat registers this node and keeps the list of registered nodes.
func (b *Broker) beat(ctx context.Context) {
	rdb, err := b.client(b.nodesKey())
	var ids []string
	if err == nil {
		ids, err = register.Run(ctx, rdb, []string{b.nodesKey()}, b.nodeID, nodeDeadAfter.Milliseconds()).StringSlice()
	}
	if err != nil {
		b.log.Debug("redis node beat failed", "err", err)
		return
	}
	forgotten := false
	if n := len(ids); n > 0 && ids[n-1] == "|new" {
		ids, forgotten = ids[:n-1], b.registered
	}
	var dead []string
	if i := slices.Index(ids, "|"); i >= 0 {
		ids, dead = ids[:i], ids[i+1:]
	}
	b.mu.Lock()
	b.nodeIDs = ids
	b.registered = true
	if forgotten {
		// Others forgot this node (it could not beat for nodeDeadAfter
		// while they could) and sweep its uids, or Redis lost its data:
		// its connected uids must be recorded again.
		b.log.Warn("redis: this node had been forgotten; it records its users' presence again once their sweep is over")
		b.rejoinSince = time.Now()
	}
	since := b.rejoinSince
	b.mu.Unlock()
	b.presenceBeat(dead)
	if !since.IsZero() {
		b.rejoinAfterSweep(ctx, since)
	}
}

// rejoinWait bounds how long a forgotten node waits for the sweep of its
// uids to end before it records them again (the sweeping node may have
// died too).
const rejoinWait = 30 * time.Second

// rejoinAfterSweep records this node's uids again (OnRejoin) once the
// sweep of what Redis held of them is over: recorded during the sweep,
// they would be swept again. The sweep takes each uid out of this node's
// set as it goes; Redis that lost its data has no set at all.
func (b *Broker) rejoinAfterSweep(ctx context.Context, since time.Time) {
	n, err := b.nodeUIDs(ctx)
	if (err != nil || n > 0) && time.Since(since) < rejoinWait {
		return // at a later beat
	}
	b.mu.Lock()
	b.rejoinSince = time.Time{}
	rejoin := b.onRejoin
	b.mu.Unlock()
	if rejoin != nil {
		rejoin()
	}
}

// OnRejoin sets what runs when this node finds that Redis forgot it
// (after it was forgotten as dead, or lost its data): presence records
// the node's connected uids again. It runs on the beat's goroutine and
// must not block.
func (b *Broker) OnRejoin(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onRejoin = f
}

// nodeUpEverywhere reports whether every master has confirmed this
// node's channel.
func (b *Broker) nodeUpEverywhere() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.routes.Load().shards {
		if !s.nodeUp {
			return false
		}
	}
	return true
}

// nodeArgs are the node arguments of a script on a Redis Cluster master:
// the prefix of node channels, the number of node ids, the ids.
func (b *Broker) nodeArgs() []any {
	b.mu.Lock()
	defer b.mu.Unlock()
	args := make([]any, 0, len(b.nodeIDs)+2)
	args = append(args, b.prefix+"n:", len(b.nodeIDs))
	for _, id := range b.nodeIDs {
		args = append(args, id)
	}
	return args
}
