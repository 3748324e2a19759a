package cluster

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is where a key lives: on the one Redis of PUSHER_REDIS_URL,
// or on the master of a Redis Cluster that serves the key's hash slot.
//
// Every per-uid key and channel of a Redis Cluster carries the uid as a
// hash tag ({uid}), so that a uid's state, history and channel share a
// slot and one script reaches them all. The broker keeps a shard (a
// client and a pub/sub connection) per master, reads which master serves
// which slot with CLUSTER SLOTS every topologyEvery and whenever a command
// or a pub/sub connection fails, and moves the subscriptions of uids whose
// slot changed master (a failover, a resharding) to the new one, repairing
// from history what was published meanwhile.

const (
	numSlots = 16384
	// topologyEvery is how often the broker reads the cluster's slots
	// (and a single Redis's replicas) when nothing failed.
	topologyEvery = time.Second
)

// shard is one Redis master: the single Redis, or one master of a Redis
// Cluster. Its fields after ap are the broker's, under Broker.mu.
type shard struct {
	addr string
	rdb  *redis.Client
	// ap sends the lookups and single publishes of concurrent /sends
	// together, in shared round trips (go-redis's automatic pipelining),
	// on a client of its own, apc. A command it has queued runs on the
	// pipeliner's context, not the request's, so apc's dial, pool, read
	// and write timeouts are each a quarter of OpTimeout: a command waits
	// for at most the batch in flight and its own, so OpTimeout still
	// bounds a /send against a hung Redis (TestHungRedisBoundsPublish).
	apc *redis.Client
	ap  *redis.AutoPipeliner

	// replicas the master has: when some, a publish waits until one has
	// its writes (WAIT), so that a failover loses nothing acknowledged.
	replicas atomic.Int32

	ps         *redis.PubSub       // its pub/sub connection, nil between two
	subscribed map[string]struct{} // uids asked of ps
	inflight   map[string]int      // channel → SUBSCRIBE/UNSUBSCRIBE sent and not yet answered
	// nodeSubscribed: ps was asked for the node channel; nodeUp: Redis
	// confirmed it (nodes.go).
	nodeSubscribed, nodeUp bool
	healthy                bool  // ps is subscribed to every wanted uid of the shard and answering
	lastErr                error // why its last pub/sub connection ended
	lostLink               bool  // a pub/sub connection was lost: the next one repairs
	draining               chan struct{}
	// retired is closed when the shard is no longer a master: its
	// receiver ends and its client is closed.
	retired chan struct{}
}

// newShard makes the clients of the master at addr; they connect on
// first use.
func (b *Broker) newShard(addr string) (*shard, error) {
	s := &shard{
		addr:       addr,
		rdb:        redis.NewClient(b.shardOptions(addr)),
		subscribed: map[string]struct{}{},
		inflight:   map[string]int{},
		retired:    make(chan struct{}),
	}
	apOpt := b.shardOptions(addr)
	per := max(b.cfg.OpTimeout/4, 50*time.Millisecond)
	apOpt.DialTimeout, apOpt.PoolTimeout, apOpt.ReadTimeout, apOpt.WriteTimeout = per, per, per, per
	s.apc = redis.NewClient(apOpt)
	var err error
	if s.ap, err = s.apc.AutoPipeline(); err != nil {
		_ = s.close()
		return nil, fmt.Errorf("redis automatic pipelining: %w", err)
	}
	return s, nil
}

// close closes s's clients.
func (s *shard) close() error {
	if s.rdb == nil {
		return nil // the routing's stand-in for a slot without a master
	}
	return errors.Join(s.rdb.Close(), s.apc.Close())
}

// routing says which shard serves a key. It is never changed: a new
// topology is a new routing.
type routing struct {
	shards []*shard
	slots  []*shard // by hash slot; nil for a single Redis
}

// forKey is the shard that serves key.
func (r *routing) forKey(key string) *shard {
	if r.slots == nil {
		return r.shards[0]
	}
	return r.slots[keySlot(key)]
}

// tag is how uid appears in its keys and channel: the uid itself, and
// on a Redis Cluster a hash tag, so that its keys share a slot: {uid},
// or for a uid with a brace (which would end or empty the tag) the hex of
// a hash of it, then the uid: {9f3a01c2}a}b. untag reads a channel's
// back.
func (b *Broker) tag(uid string) string {
	switch {
	case !b.clustered:
		return uid
	case !strings.ContainsAny(uid, "{}"):
		return "{" + uid + "}"
	}
	h := fnv.New32a()
	h.Write([]byte(uid))
	return "{" + hex.EncodeToString(h.Sum(nil)) + "}" + uid
}

// untag is the uid of a tag.
func (b *Broker) untag(t string) (string, bool) {
	if !b.clustered {
		return t, true
	}
	tagged, ok := strings.CutPrefix(t, "{")
	if !ok {
		return "", false
	}
	tag, rest, ok := strings.Cut(tagged, "}")
	if !ok {
		return "", false
	}
	if rest != "" {
		return rest, true
	}
	return tag, true
}

// shardOf is the shard of uid's keys and channel.
func (b *Broker) shardOf(uid string) *shard {
	return b.routes.Load().forKey(b.channel(uid))
}

// uidClient is the client of the master that serves uid's keys.
func (b *Broker) uidClient(uid string) (*redis.Client, error) {
	return b.client(b.channel(uid))
}

// errNoMaster is a key's error while its slot has no master.
var errNoMaster = errors.New("redis cluster: a hash slot has no master (failover under way?)")

// topologyLoop reads the topology every topologyEvery, or when kicked,
// until Close.
func (b *Broker) topologyLoop() {
	t := time.NewTicker(topologyEvery)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.topoKick:
		}
		ctx, cancel := context.WithTimeout(b.ctx, topologyEvery)
		if err := b.refreshTopology(ctx); err != nil && b.ctx.Err() == nil {
			b.log.Warn("read redis topology", "err", err)
		}
		cancel()
	}
}

// kickTopology asks the topology loop to read the topology now.
func (b *Broker) kickTopology() {
	select {
	case b.topoKick <- struct{}{}:
	default:
	}
}

// refreshTopology reads where slots live and each master's replicas,
// and applies it.
func (b *Broker) refreshTopology(ctx context.Context) error {
	rt := b.routes.Load()
	if !b.clustered {
		s := rt.shards[0]
		info, err := s.rdb.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		s.replicas.Store(int32(connectedReplicas(info)))
		return nil
	}
	shards, err := b.clusterShards(ctx, rt)
	if err != nil {
		return err
	}
	b.applyShards(shards)
	return nil
}

// connectedReplicas reads connected_slaves from INFO replication.
func connectedReplicas(info string) int {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// clusterShards asks CLUSTER SHARDS of the masters known and the seeds,
// all at once, and takes the first answer: a master that is down without
// a word (a lost machine, a partition) must not hold the others' answers
// until the deadline.
func (b *Broker) clusterShards(ctx context.Context, rt *routing) ([]redis.ClusterShard, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		shards []redis.ClusterShard
		err    error
	}
	answers := make(chan answer, len(rt.shards)+len(b.seeds))
	ask := func(c *redis.Client, own bool) {
		shards, err := c.ClusterShards(ctx).Result()
		if own {
			_ = c.Close()
		}
		if err == nil && len(shards) == 0 {
			err = errors.New("no shards")
		}
		answers <- answer{shards, err}
	}
	n := 0
	for _, s := range rt.shards {
		if s.rdb != nil {
			n++
			go ask(s.rdb, false)
		}
	}
	for _, addr := range b.seeds {
		n++
		go ask(redis.NewClient(b.shardOptions(addr)), true)
	}
	var errs []error
	for range n {
		a := <-answers
		if a.err == nil {
			return a.shards, nil
		}
		errs = append(errs, a.err)
	}
	return nil, fmt.Errorf("CLUSTER SHARDS: no node answered: %w", errors.Join(errs...))
}

// nodeAddr is where to reach a node of CLUSTER SHARDS.
func (b *Broker) nodeAddr(n redis.Node) string {
	host := n.Endpoint
	if host == "" || host == "?" {
		host = n.IP
	}
	port := n.Port
	if b.opt.TLSConfig != nil && n.TLSPort != 0 {
		port = n.TLSPort
	}
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}

// applyShards makes shards the routing: a shard for each master that is
// online (the ones already known are kept), its slots to it, and the
// slots of a shard without an online master to none, so that their
// commands fail (503) until a replica takes over. The uids whose slot
// changed master are subscribed on the new one and repaired.
func (b *Broker) applyShards(shards []redis.ClusterShard) {
	old := b.routes.Load()
	known := make(map[string]*shard, len(old.shards))
	for _, s := range old.shards {
		known[s.addr] = s
	}
	none := &shard{} // a slot nobody serves: its keys fail until one does
	rt := &routing{slots: make([]*shard, numSlots)}
	for i := range rt.slots {
		rt.slots[i] = none
	}
	byAddr := map[string]*shard{}
	replicas := map[*shard]int{}
	for _, sh := range shards {
		var master *redis.Node
		n := 0
		for i, node := range sh.Nodes {
			switch {
			case node.Role == "master" && node.Health == "online":
				master = &sh.Nodes[i]
			case node.Role != "master" && node.Health != "fail":
				// Redis 7.0 says "loading" of a replica until it has
				// replicated a first write: it is there all the same.
				n++
			}
		}
		if master == nil || len(sh.Slots) == 0 {
			// No master online (its slots answer 503 until a replica
			// takes over), or a master that serves nothing (a node that
			// has just joined, by some node's gossip): not a shard.
			continue
		}
		addr := b.nodeAddr(*master)
		s := byAddr[addr]
		if s == nil {
			if s = known[addr]; s == nil {
				var err error
				if s, err = b.newShard(addr); err != nil {
					b.log.Warn("redis cluster master", "redis", addr, "err", err)
					continue
				}
			}
			byAddr[addr] = s
			rt.shards = append(rt.shards, s)
		}
		replicas[s] = n
		for _, r := range sh.Slots {
			for i := max(r.Start, 0); i <= min(r.End, numSlots-1); i++ {
				rt.slots[i] = s
			}
		}
	}
	changed := len(rt.shards) != len(old.shards) || len(old.slots) != numSlots
	for i := 0; !changed && i < numSlots; i++ {
		changed = rt.slots[i].addr != old.slots[i].addr
	}
	b.mu.Lock()
	if b.stopped {
		// Close has taken the routing it closes: a shard made now would
		// outlive it.
		b.mu.Unlock()
		for _, s := range rt.shards {
			if known[s.addr] == nil {
				_ = s.close()
			}
		}
		return
	}
	for s, n := range replicas {
		s.replicas.Store(int32(n))
	}
	if !changed {
		b.mu.Unlock()
		return
	}
	b.routes.Store(rt)
	var added []*shard
	for _, s := range rt.shards {
		if known[s.addr] == nil {
			added = append(added, s)
		}
	}
	var retired []*shard
	for _, s := range old.shards {
		if byAddr[s.addr] != s && s.rdb != nil {
			retired = append(retired, s)
		}
	}
	var closing []func() error
	for _, s := range retired {
		close(s.retired)
		if s.ps != nil {
			closing = append(closing, s.ps.Close) // ends its receiver, which closes its client
		}
		if !b.started {
			closing = append(closing, s.close) // no receiver
		}
	}
	// Subscriptions on a shard that no longer serves their slot move.
	for uid, s := range b.assigned {
		if rt.forKey(b.channel(uid)) != s {
			b.lost(uid, s)
		}
	}
	started := b.started
	b.mu.Unlock()
	// Outside mu: closing a pub/sub connection waits for its lock, which
	// a reconnecting receiver holds while it dials.
	for _, f := range closing {
		_ = f()
	}
	if started {
		for _, s := range added {
			b.startShard(s)
		}
	}
	b.kick()
}

// unassign forgets that uid is subscribed on s. Callers hold mu.
func (b *Broker) unassign(uid string, s *shard) {
	delete(s.subscribed, uid)
	delete(b.assigned, uid)
	delete(b.confirmed, b.channel(uid))
}

// startShard runs s's pub/sub connection until s is retired or the
// broker closed.
func (b *Broker) startShard(s *shard) {
	b.shardsWG.Go(func() {
		b.run(s)
		select {
		case <-s.retired:
			_ = s.close()
		default: // the broker closes its clients
		}
	})
}

// shardOptions are the options of a client of the master at addr.
func (b *Broker) shardOptions(addr string) *redis.Options {
	o := *b.opt
	o.Addr = addr
	return &o
}

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of its
// hash tag (the part between the first '{' and the next '}', when not
// empty) or of the whole key, modulo 16384.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % numSlots)
}

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
