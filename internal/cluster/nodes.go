package cluster

import (
	"context"
	"errors"
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

// ErrResyncing is a lookup's error when some uids have no subscriber and
// a node of the cluster is (re)subscribing: they may be connected there.
var ErrResyncing = errors.New("a node of the cluster is resubscribing its connections: which uids are online is not known yet")

// registerScript records node ARGV[1] as alive at Redis's time.
// KEYS: the nodes hash.
const registerScript = `
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return 0
`

// uncertainScript counts the registered nodes whose channel has no
// subscriber, and forgets those not heard of for ARGV[2] ms.
// KEYS: the nodes hash. ARGV: the prefix of node channels, ARGV[2].
const uncertainScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #nodes, 2 do
  if now - tonumber(nodes[i + 1]) > tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[1], nodes[i])
  else
    local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[1] .. nodes[i])
    if tonumber(subs[2]) == 0 then n = n + 1 end
  end
end
return n
`

var (
	register  = redis.NewScript(registerScript)
	uncertain = redis.NewScript(uncertainScript)
)

func (b *Broker) nodeChannel() string { return b.prefix + "n:" + b.nodeID }
func (b *Broker) nodesKey() string    { return b.prefix + "nodes" }

// resyncing reports whether some node of the cluster is (re)subscribing,
// so that uids without a subscriber may be connected there.
func (b *Broker) resyncing(ctx context.Context) (bool, error) {
	n, err := uncertain.Run(ctx, b.rdb, []string{b.nodesKey()}, b.prefix+"n:", nodeDeadAfter.Milliseconds()).Int()
	return n > 0, err
}

// beatLoop registers this node every nodeBeat while its node channel is
// subscribed, and at once when it becomes so, until Close.
func (b *Broker) beatLoop() {
	defer b.wg.Done()
	t := time.NewTicker(nodeBeat)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.beatKick:
		}
		b.mu.Lock()
		up := b.nodeUp
		b.mu.Unlock()
		if !up {
			continue
		}
		ctx, cancel := context.WithTimeout(b.ctx, nodeBeat)
		if err := register.Run(ctx, b.rdb, []string{b.nodesKey()}, b.nodeID).Err(); err != nil {
			b.log.Debug("redis node beat failed", "err", err)
		}
		cancel()
	}
}

// unregister takes this node out of the nodes hash, so that its leaving
// does not make other nodes' offline uids uncertain.
func (b *Broker) unregister(ctx context.Context) {
	if err := b.rdb.HDel(ctx, b.nodesKey(), b.nodeID).Err(); err != nil {
		b.log.Warn("redis unregister node failed: other nodes forget it by themselves", "after", nodeDeadAfter, "err", err)
	}
}
