// Package cluster owns cluster mode: routing messages between go-pusher
// nodes through Redis pub/sub, the uids' history and offsets in Redis, and
// the repair of what a node missed while its pub/sub connection was down.
// It reaches this node's connections only through Local.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"go-pusher/internal/stream"
)

// Local is what the broker needs of this node's connections (the hub).
type Local interface {
	// Deliver queues it on uid's connections here. It must not block.
	Deliver(uid string, it stream.Item)
	// Resync closes uid's format=json connections here with 1012, so that
	// they come back with since= and learn what was lost.
	Resync(uid string)
	// Disconnect closes uid's connections here with 1008 and reason
	// (POST /disconnect). It must not block.
	Disconnect(uid, reason string)
}

// Config is what a Broker needs to know.
type Config struct {
	URL         string        // PUSHER_REDIS_URL
	Prefix      string        // of this cluster's channels and keys
	HistorySize int           // messages kept per uid (0: none)
	HistoryTTL  time.Duration // how long they are kept
	// OpTimeout bounds a publish, all its batches together: the server's
	// -message-log-timeout, the wait /send allows itself.
	OpTimeout time.Duration
	// IdempotencyTTL is how long a finished idempotency key is
	// remembered (-idempotency-ttl).
	IdempotencyTTL time.Duration
}

const (
	// redisBatch bounds the channels of one SUBSCRIBE, UNSUBSCRIBE or
	// PUBSUB NUMSUB, and the commands of one pipeline.
	redisBatch = 1000
	// healthInterval: a pub/sub connection silent this long is pinged;
	// silent for another such period, it is taken for dead and replaced.
	healthInterval = 5 * time.Second
	// maxBackoff caps the wait between reconnection attempts.
	maxBackoff = 5 * time.Second
)

// Broker routes messages through Redis pub/sub.
//
// A node subscribes to the channel of a uid while it holds at least one
// open connection of that uid, on one pub/sub connection, with SUBSCRIBE
// and UNSUBSCRIBE batched by a syncer goroutine that applies the
// difference between the uids the hub has (wanted) and those subscribed.
// /send asks PUBSUB NUMSUB who is online and publishes one message per
// uid.
//
// Every delivery goes through Redis, this node's own connections
// included: Redis sends a subscriber the messages of a channel in the
// order it executed the PUBLISHes, so a sender's messages reach every
// connection in /send order whichever nodes accepted them. (Delivering
// to local connections directly would let a message overtake an earlier
// one still in flight from another node.) A uid counts as online once
// some node's subscription to it is in place.
//
// When the pub/sub connection fails, a new one is made with backoff and
// every wanted uid is subscribed again.
//
// Goroutines: the receiver (run), the syncer and the repairer, started by
// Start and stopped by Close. Lock order: Broker.mu, then whatever Local
// takes.
type Broker struct {
	// opt are the options of a client of a master; seeds the addresses
	// of PUSHER_REDIS_URL, where a Redis Cluster's topology is first read.
	opt       *redis.Options
	seeds     []string
	clustered bool // a Redis Cluster (topology.go)
	// routes says which shard serves which key; topologyLoop replaces
	// it when the cluster's masters change.
	routes   atomic.Pointer[routing]
	topoKick chan struct{} // wakes topologyLoop; capacity 1
	local    Local
	nodeID   string // names this node's channel and registration (nodes.go)
	log      *slog.Logger
	prefix   string // channel of uid u is prefix + "u:" + tag(u); keys prefix + "s:" and "h:"
	cfg      Config
	publish  *redis.Script
	// consts are the publish script's arguments that never change, made
	// once rather than per publish.
	consts struct {
		historySize, historyTTL, stateTTL string
		nodesKey, nodePrefix, deadAfter   string
	}

	mu       sync.Mutex
	wanted   map[string]struct{} // uids with an open local connection
	pending  map[string]bool     // uid → wanted, changes not yet applied
	assigned map[string]*shard   // uid → the shard whose pub/sub connection was asked for it
	// confirmed: channels subscribed, with no (UN)SUBSCRIBE unanswered.
	confirmed map[string]struct{}
	waiters   map[string][]chan struct{}
	// last is the position of the latest message handed to the hub, per
	// uid. repairing holds a uid's messages from Redis until what it
	// missed is delivered from history (see repair): after a lost pub/sub
	// connection, and after a new subscription (what was published
	// between the baseline read and the subscription taking effect).
	last      map[string]stream.Position
	repairing map[string]*repairState
	// base is a uid's offset read just before this node subscribed to
	// it: where a repair starts for a uid that has had no message here
	// yet. Unlike last it says nothing of what was delivered.
	base map[string]stream.Position
	// expected holds the offsets Expect read for uids about to register.
	expected map[string]expectation
	workKick chan struct{} // wakes the repairer; capacity 1
	// nodeIDs are the nodes registered when this one last beat: on a
	// Redis Cluster, a script asks whether their channels have a
	// subscriber on its master (nodes.go).
	nodeIDs            []string
	onPresence         func(PresenceEvent) // OnPresence; nil: presence is not kept
	onRejoin           func()              // OnRejoin
	registered         bool                // a beat registered this node: a later one that finds it missing rejoins
	rejoinSince        time.Time           // when this node found itself forgotten, until it rejoined
	toSweep            map[string]struct{} // dead nodes whose presence this node sweeps
	beatKick           chan struct{}       // wakes beatLoop; capacity 1
	beatStop, beatDone chan struct{}       // closed by unregister; by beatLoop when it ends
	presenceStop       chan struct{}       // closed by StopPresence (or Close): presenceLoop ends
	presenceDone       chan struct{}       // closed by presenceLoop when it ends
	presenceOnce       sync.Once
	beating            bool // Start ran beatLoop
	started            bool // Start ran: new shards get a receiver at once
	stopped            bool // Close took the routing: no new shard

	// ctx is cancelled by Close: background Redis calls end with it.
	ctx    context.Context
	cancel context.CancelFunc

	notify    chan struct{} // wakes the syncer; capacity 1
	stop      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup // the syncer, the repairer, the beats and the topology loop
	shardsWG  sync.WaitGroup // the shards' receivers

	published  prometheus.Counter
	received   prometheus.Counter
	reconnects prometheus.Counter
}

// repairState is a uid whose messages from Redis are held until a repair.
type repairState struct {
	held []stream.Item
	lost bool // after a lost connection: if history cannot fill the gap, say so
}

// ErrBadURL is the error of a PUSHER_REDIS_URL that does not parse. It
// never quotes the URL, which may hold a password.
var ErrBadURL = errors.New("invalid PUSHER_REDIS_URL: want redis://[user:password@]host:port[/db], rediss://..., or for a Redis Cluster redis+cluster://[user:password@]host:port[?addr=host:port...]")

// CheckURL reports whether rawURL names a Redis or a Redis Cluster,
// without saying more of it than ErrBadURL does.
func CheckURL(rawURL string) error {
	_, _, _, err := parseURL(rawURL)
	return err
}

// parseURL reads PUSHER_REDIS_URL: redis[s]://... names one Redis, and
// redis[s]+cluster://host:port?addr=host:port&... a Redis Cluster, by
// one or more of its nodes (go-redis's cluster URL, scheme aside). It
// returns the options of a client of one master, and the addresses to
// read the cluster's topology from.
func parseURL(rawURL string) (opt *redis.Options, seeds []string, clustered bool, err error) {
	scheme, rest, _ := strings.Cut(rawURL, "://")
	base, clustered := strings.CutSuffix(scheme, "+cluster")
	if !clustered {
		if opt, err = redis.ParseURL(rawURL); err != nil {
			return nil, nil, false, ErrBadURL
		}
		return opt, []string{opt.Addr}, false, nil
	}
	co, err := redis.ParseClusterURL(base + "://" + rest)
	if err != nil {
		return nil, nil, false, ErrBadURL
	}
	return &redis.Options{
		ClientName: co.ClientName, Protocol: co.Protocol,
		Username: co.Username, Password: co.Password, TLSConfig: co.TLSConfig,
		MaxRetries: co.MaxRetries, DialTimeout: co.DialTimeout, ReadTimeout: co.ReadTimeout, WriteTimeout: co.WriteTimeout,
		PoolSize: co.PoolSize, PoolTimeout: co.PoolTimeout, MinIdleConns: co.MinIdleConns, MaxIdleConns: co.MaxIdleConns,
		MaxActiveConns: co.MaxActiveConns, ConnMaxIdleTime: co.ConnMaxIdleTime, ConnMaxLifetime: co.ConnMaxLifetime,
	}, co.Addrs, true, nil
}

// New connects to cfg.URL and checks that Redis answers; errors name
// PUSHER_REDIS_URL and never show its password. Start runs the broker.
func New(ctx context.Context, cfg Config, local Local, log *slog.Logger, reg prometheus.Registerer) (*Broker, error) {
	opt, seeds, clustered, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if clustered && strings.ContainsAny(cfg.Prefix, "{}") {
		return nil, errors.New("PUSHER_REDIS_PREFIX: no { or } on a Redis Cluster: they would pick the keys' hash slot")
	}
	// Maintenance notifications are a Redis Enterprise feature; plain
	// Redis answers the handshake with an error on every connection.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	opt.DisableIdentity = true
	// /send waits on Redis: an unreachable Redis must turn into a 503
	// within seconds, not after go-redis's default 5 s dial and three
	// retries. URL parameters (dial_timeout=...) still win.
	if opt.DialTimeout == 0 {
		opt.DialTimeout = 2 * time.Second
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = 2 * time.Second
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = 2 * time.Second
	}
	if opt.MaxRetries == 0 {
		// No retries: go-redis would run a pipeline again after a read
		// timeout even when Redis ran it, and the publish script is not
		// idempotent (it would deliver a message twice, at two offsets).
		opt.MaxRetries = -1
	}
	opt.ContextTimeoutEnabled = true
	nodeID, err := stream.NewEpoch()
	if err != nil {
		return nil, err
	}
	b := &Broker{
		opt:          opt,
		seeds:        seeds,
		clustered:    clustered,
		topoKick:     make(chan struct{}, 1),
		local:        local,
		nodeID:       nodeID,
		log:          log,
		prefix:       cfg.Prefix + ":",
		cfg:          cfg,
		publish:      redis.NewScript(publishScript),
		assigned:     map[string]*shard{},
		toSweep:      map[string]struct{}{},
		confirmed:    map[string]struct{}{},
		waiters:      map[string][]chan struct{}{},
		last:         map[string]stream.Position{},
		repairing:    map[string]*repairState{},
		base:         map[string]stream.Position{},
		expected:     map[string]expectation{},
		workKick:     make(chan struct{}, 1),
		beatKick:     make(chan struct{}, 1),
		beatStop:     make(chan struct{}),
		beatDone:     make(chan struct{}),
		presenceStop: make(chan struct{}),
		presenceDone: make(chan struct{}),
		wanted:       map[string]struct{}{},
		pending:      map[string]bool{},
		notify:       make(chan struct{}, 1),
		stop:         make(chan struct{}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_redis_published_total", Help: "Messages published to Redis (one per uid).",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_redis_received_total", Help: "Messages received from Redis (one per uid).",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_redis_reconnects_total", Help: "Times a Redis pub/sub connection was lost and made again.",
		}),
	}
	if clustered {
		b.publish = redis.NewScript(publishClusterScript)
	}
	b.consts.historySize = strconv.Itoa(cfg.HistorySize)
	b.consts.historyTTL = strconv.FormatInt(cfg.HistoryTTL.Milliseconds(), 10)
	b.consts.stateTTL = strconv.FormatInt(max(redisStateTTL, cfg.HistoryTTL).Milliseconds(), 10)
	b.consts.nodesKey, b.consts.nodePrefix = b.nodesKey(), b.prefix+"n:"
	b.consts.deadAfter = strconv.FormatInt(nodeDeadAfter.Milliseconds(), 10)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if err := b.connect(ctx); err != nil {
		b.cancel()
		return nil, err
	}
	reg.MustRegister(b.published, b.received, b.reconnects, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_redis_subscriptions", Help: "uid channels this node is subscribed to.",
	}, func() float64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return float64(len(b.assigned))
	}), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_redis_masters", Help: "Redis masters this node routes to (1 for a single Redis).",
	}, func() float64 { return float64(len(b.routes.Load().shards)) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_cluster_nodes", Help: "go-pusher nodes registered in Redis at this node's last beat, itself included.",
	}, func() float64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return float64(len(b.nodeIDs))
	}))
	return b, nil
}

// connect checks that Redis answers and reads its topology: for a
// single Redis one shard, with the automatic pipeliner; for a Redis
// Cluster a shard per master.
func (b *Broker) connect(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if b.clustered {
		b.routes.Store(&routing{})
		shards, err := b.clusterShards(pctx, b.routes.Load())
		if err != nil {
			return fmt.Errorf("PUSHER_REDIS_URL: redis cluster at %s does not answer: %w", strings.Join(b.seeds, ","), err)
		}
		b.applyShards(shards)
		if len(b.routes.Load().shards) == 0 {
			return fmt.Errorf("PUSHER_REDIS_URL: redis cluster at %s serves no slot", strings.Join(b.seeds, ","))
		}
		return nil
	}
	s, err := b.newShard(b.opt.Addr)
	if err != nil {
		return err
	}
	if err := s.rdb.Ping(pctx).Err(); err != nil {
		// The client has started nothing yet; its error is of no use.
		_ = s.close()
		return fmt.Errorf("PUSHER_REDIS_URL: redis at %s does not answer: %w", b.opt.Addr, err)
	}
	if err := b.publish.Load(pctx, s.rdb).Err(); err != nil {
		_ = s.close()
		return fmt.Errorf("PUSHER_REDIS_URL: load the publish script into redis at %s: %w", b.opt.Addr, err)
	}
	b.routes.Store(&routing{shards: []*shard{s}})
	if err := b.refreshTopology(pctx); err != nil {
		b.log.Warn("read redis replicas", "err", err)
	}
	return nil
}

// Start runs the pub/sub connections, the syncer, the repairer, the
// beats and the topology reader until Close.
func (b *Broker) Start() {
	b.mu.Lock()
	b.started = true
	shards := b.routes.Load().shards
	b.mu.Unlock()
	for _, s := range shards {
		b.startShard(s)
	}
	b.wg.Add(2)
	go b.syncLoop()
	go b.repairLoop()
	b.beating = true
	b.wg.Go(b.beatLoop)
	b.wg.Go(b.topologyLoop)
	b.wg.Go(b.presenceLoop)
}

func (b *Broker) channel(uid string) string  { return b.prefix + "u:" + b.tag(uid) }
func (b *Broker) stateKey(uid string) string { return b.prefix + "s:" + b.tag(uid) }
func (b *Broker) histKey(uid string) string  { return b.prefix + "h:" + b.tag(uid) }
func (b *Broker) idemKey(key string) string  { return b.prefix + "i:" + key }

// guardKey is, on a Redis Cluster, where the publish script records that
// idempotency key key went to uid: in uid's slot (publishClusterScript).
func (b *Broker) guardKey(uid, key string) string { return b.prefix + "g:" + b.tag(uid) + ":" + key }

// client is the client of the master that serves key.
func (b *Broker) client(key string) (*redis.Client, error) {
	s := b.routes.Load().forKey(key)
	if s.rdb == nil {
		b.kickTopology()
		return nil, errNoMaster
	}
	return s.rdb, nil
}

// UserOnline tells the broker that uid has an open connection here. It
// never blocks: the syncer subscribes.
func (b *Broker) UserOnline(uid string) { b.want(uid, true) }

// UserOffline tells the broker that uid has no open connection here any
// more.
func (b *Broker) UserOffline(uid string) { b.want(uid, false) }

func (b *Broker) want(uid string, on bool) {
	b.mu.Lock()
	if on {
		b.wanted[uid] = struct{}{}
		if e, ok := b.expected[uid]; ok {
			// The connection Expect read for has registered: its
			// baseline holds however long the subscription takes (a
			// Redis outage included).
			delete(b.expected, uid)
			if b.repairFrom(uid) == nil {
				b.base[uid] = e.pos
			}
		}
	} else {
		delete(b.wanted, uid)
	}
	b.pending[uid] = on
	b.mu.Unlock()
	b.kick()
}

func (b *Broker) kick() {
	select {
	case b.notify <- struct{}{}:
	default: // a sync is due already; it will see this change
	}
}

func inBatches(items []string, f func([]string) error) error {
	for len(items) > 0 {
		n := min(len(items), redisBatch)
		if err := f(items[:n]); err != nil {
			return err
		}
		items = items[n:]
	}
	return nil
}

// Online splits uids into those with an open connection on some node
// (some node, this one included, is subscribed to the uid's channel) and
// the others, keeping their order.
func (b *Broker) Online(ctx context.Context, uids []string) (online, offline []string, err error) {
	// A plain PUBSUB NUMSUB first: usually every uid has a subscriber,
	// and then that is the whole answer. The uids it finds without one
	// are asked again with the node check in the same step (lookupScript),
	// so that a node resubscribing between two answers is not missed.
	counts, err := b.numSub(ctx, uids)
	if err != nil {
		return nil, nil, err
	}
	var none []string
	for _, uid := range uids {
		if counts[uid] == 0 {
			none = append(none, uid)
		}
	}
	if len(none) > 0 {
		again, err := b.recount(ctx, none)
		if err != nil {
			return nil, nil, err
		}
		maps.Copy(counts, again)
	}
	for _, uid := range uids {
		if counts[uid] > 0 {
			online = append(online, uid)
		} else {
			offline = append(offline, uid)
		}
	}
	return online, offline, nil
}

// byShard groups uids by the shard of their keys, shards in the order
// of their first uid.
func (b *Broker) byShard(uids []string) ([]*shard, map[*shard][]string) {
	rt := b.routes.Load()
	var order []*shard
	groups := make(map[*shard][]string, 1)
	for _, uid := range uids {
		s := rt.forKey(b.channel(uid))
		if _, ok := groups[s]; !ok {
			order = append(order, s)
		}
		groups[s] = append(groups[s], uid)
	}
	return order, groups
}

// numSub counts the subscribers of uids' channels: PUBSUB NUMSUB, or on
// a Redis Cluster PUBSUB SHARDNUMSUB of each master for its uids.
func (b *Broker) numSub(ctx context.Context, uids []string) (map[string]int64, error) {
	counts := make(map[string]int64, len(uids))
	order, groups := b.byShard(uids)
	for _, s := range order {
		if s.rdb == nil {
			b.kickTopology()
			return nil, errNoMaster
		}
		err := inBatches(groups[s], func(batch []string) error {
			chs := make([]string, len(batch))
			for i, uid := range batch {
				chs[i] = b.channel(uid)
			}
			var cmd *redis.MapStringIntCmd
			if b.clustered {
				cmd = s.ap.PubSubShardNumSub(ctx, chs...)
			} else {
				cmd = s.ap.PubSubNumSub(ctx, chs...)
			}
			res, err := cmd.Result()
			for i, uid := range batch {
				counts[uid] = res[chs[i]]
			}
			return err
		})
		if err != nil {
			b.failed(err)
			return nil, fmt.Errorf("redis PUBSUB NUMSUB: %w", err)
		}
	}
	return counts, nil
}

// recount counts the subscribers of uids' channels again, with the node
// check: ErrResyncing when one has none and some node is resubscribing.
func (b *Broker) recount(ctx context.Context, uids []string) (map[string]int64, error) {
	counts := make(map[string]int64, len(uids))
	order, groups := b.byShard(uids)
	nodes := b.nodeArgs()
	for _, s := range order {
		if s.rdb == nil {
			return nil, errNoMaster
		}
		err := inBatches(groups[s], func(batch []string) error {
			var cmd *redis.Cmd
			if b.clustered {
				args := append(append([]any(nil), nodes...), toAny(b.channels(batch))...)
				cmd = lookupCluster.Run(ctx, s.ap, nil, args...)
			} else {
				args := append([]any{b.prefix + "n:", nodeDeadAfter.Milliseconds()}, toAny(b.channels(batch))...)
				cmd = lookup.Run(ctx, s.ap, []string{b.nodesKey()}, args...)
			}
			res, err := cmd.Int64Slice()
			if err != nil {
				return err
			}
			if len(res) != len(batch)+1 {
				return fmt.Errorf("lookup script: %d results for %d channels", len(res), len(batch))
			}
			if res[0] > 0 {
				return ErrResyncing
			}
			for i, uid := range batch {
				counts[uid] = res[i+1]
			}
			return nil
		})
		if errors.Is(err, ErrResyncing) {
			return nil, err
		}
		if err != nil {
			b.failed(err)
			return nil, fmt.Errorf("redis lookup: %w", err)
		}
	}
	return counts, nil
}

func (b *Broker) channels(uids []string) []string {
	chs := make([]string, len(uids))
	for i, uid := range uids {
		chs[i] = b.channel(uid)
	}
	return chs
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// failed reads the topology again after a command failed on a Redis
// Cluster: a master may have gone, or a slot moved.
func (b *Broker) failed(err error) {
	if b.clustered && err != nil && !errors.Is(err, context.Canceled) {
		b.kickTopology()
	}
}

// Ready reports why the broker cannot route messages now, or nil: a
// master that does not answer, or this node's pub/sub connection to one
// that does not follow. On a Redis Cluster a master that does not answer
// is the cluster's trouble, not this node's (it fails over, and every
// node would answer the same): the node is ready while some master
// answers and it follows every master that does.
func (b *Broker) Ready(ctx context.Context) error {
	shards := b.routes.Load().shards
	var down []error
	for _, s := range shards {
		if err := s.rdb.Ping(ctx).Err(); err != nil {
			down = append(down, fmt.Errorf("redis %s: %w", s.addr, err))
			continue
		}
		b.mu.Lock()
		healthy, lastErr := s.healthy, s.lastErr
		b.mu.Unlock()
		if !healthy {
			if lastErr != nil {
				return fmt.Errorf("redis %s: pub/sub not subscribed yet (last error: %w)", s.addr, lastErr)
			}
			return fmt.Errorf("redis %s: pub/sub not subscribed yet", s.addr)
		}
	}
	switch {
	case len(shards) == 0:
		return errNoMaster
	case len(down) == len(shards) || (!b.clustered && len(down) > 0):
		return errors.Join(down...)
	}
	return nil
}

// Close unsubscribes from every channel, so that other nodes stop
// counting this one, hands the messages Redis sent before that to the
// hub, then stops the goroutines and closes the client.
func (b *Broker) Close(ctx context.Context) error {
	var err error
	b.closeOnce.Do(func() { err = b.close(ctx) })
	return err
}

// maxDrain bounds how long Close waits for Redis to confirm the
// unsubscribe: a hung Redis must not eat the time the connections need
// for their flush and 1001.
const maxDrain = 2 * time.Second

func (b *Broker) close(ctx context.Context) error {
	// Unregistered first: other nodes then do not take this node's
	// unsubscribing for a resubscription (nodes.go).
	u := maxDrain / 4
	if dl, ok := ctx.Deadline(); ok {
		u = min(u, time.Until(dl)/6)
	}
	uctx, cancel := context.WithTimeout(ctx, u)
	b.unregister(uctx)
	cancel()
	d := maxDrain
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)/3)
	}
	dctx, cancel := context.WithTimeout(ctx, d)
	b.drain(dctx)
	cancel()

	b.presenceOnce.Do(func() { close(b.presenceStop) })
	close(b.stop)
	b.cancel() // ends the repairer's, the syncer's and the topology's Redis calls
	b.mu.Lock()
	b.stopped = true
	shards := b.routes.Load().shards
	var pss []*redis.PubSub
	for _, s := range shards {
		if s.ps != nil {
			pss = append(pss, s.ps)
		}
	}
	b.mu.Unlock()
	for _, ps := range pss {
		// Ends the receiver's blocking read; its error is the receiver's.
		_ = ps.Close()
	}
	waited := make(chan struct{})
	go func() {
		b.wg.Wait()
		b.shardsWG.Wait()
		close(waited)
	}()
	closeAll := func() error {
		var errs []error
		for _, s := range shards {
			errs = append(errs, s.close())
		}
		return errors.Join(errs...)
	}
	select {
	case <-waited:
	case <-ctx.Done():
		// A call blocked on a hung Redis notices the cancellation only
		// at its read timeout; closing the clients' connections ends it
		// now.
		_ = closeAll()
		<-waited
		return ctx.Err()
	}
	// No request is under way: the server closes the broker after the
	// listeners. What a shard's pipeliner still holds ends within its
	// timeouts.
	if err := closeAll(); err != nil {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}

// drain unsubscribes every shard's connection from its uid channels and
// waits, until ctx ends, for Redis to confirm it: the messages it sent
// before reach the hub.
func (b *Broker) drain(ctx context.Context) {
	type wait struct {
		ps      *redis.PubSub
		drained chan struct{}
	}
	var waits []wait
	b.mu.Lock()
	for _, s := range b.routes.Load().shards {
		if s.ps != nil && len(s.subscribed) > 0 {
			s.draining = make(chan struct{})
			waits = append(waits, wait{s.ps, s.draining})
		}
	}
	b.mu.Unlock()
	var sent []wait
	for _, w := range waits {
		var err error
		if b.clustered {
			err = w.ps.SUnsubscribe(ctx)
		} else {
			err = w.ps.Unsubscribe(ctx)
		}
		if err == nil {
			sent = append(sent, w)
		}
	}
	for _, w := range sent {
		select {
		case <-w.drained:
		case <-ctx.Done():
			return
		}
	}
}
