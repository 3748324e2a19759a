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
	"sync"
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
	rdb *redis.Client
	// ap sends the lookups and single publishes of concurrent /sends
	// together, in shared round trips (go-redis's automatic pipelining),
	// on a client of its own, apc. A command it has queued runs on the
	// pipeliner's context, not the request's, so apc's dial, pool, read
	// and write timeouts are each a quarter of OpTimeout: a command waits
	// for at most the batch in flight and its own, so OpTimeout still
	// bounds a /send against a hung Redis (TestHungRedisBoundsPublish).
	apc     *redis.Client
	ap      *redis.AutoPipeliner
	local   Local
	nodeID  string // names this node's channel and registration (nodes.go)
	log     *slog.Logger
	prefix  string // channel of uid u is prefix + "u:" + u; keys prefix + "s:" and "h:"
	cfg     Config
	publish *redis.Script

	mu         sync.Mutex
	wanted     map[string]struct{} // uids with an open local connection
	pending    map[string]bool     // uid → wanted, changes not yet applied
	subscribed map[string]struct{} // uids asked of the current pub/sub connection
	ps         *redis.PubSub       // the current pub/sub connection, nil between two
	confirmed  map[string]struct{} // channels subscribed on ps, with no (UN)SUBSCRIBE unanswered
	inflight   map[string]int      // channel → SUBSCRIBE/UNSUBSCRIBE sent and not yet answered
	waiters    map[string][]chan struct{}
	// last is the position of the latest message handed to the hub, per
	// uid. repairing holds a uid's messages from Redis until what it
	// missed is delivered from history (see repair): after a lost pub/sub
	// connection, and after a new subscription (what was published
	// between the baseline read and the subscription taking effect).
	last      map[string]stream.Position
	repairing map[string]*repairState
	lostLink  bool // a pub/sub connection was lost: the next one repairs
	// base is a uid's offset read just before this node subscribed to
	// it: where a repair starts for a uid that has had no message here
	// yet. Unlike last it says nothing of what was delivered.
	base map[string]stream.Position
	// expected holds the offsets Expect read for uids about to register.
	expected map[string]expectation
	workKick chan struct{} // wakes the repairer; capacity 1
	// nodeSubscribed: the current pub/sub connection was asked for the
	// node channel; nodeUp: Redis confirmed it (nodes.go).
	nodeSubscribed, nodeUp bool
	beatKick               chan struct{} // wakes beatLoop; capacity 1
	beatStop, beatDone     chan struct{} // closed by unregister; by beatLoop when it ends
	beating                bool          // Start ran beatLoop

	// ctx is cancelled by Close: background Redis calls end with it.
	ctx      context.Context
	cancel   context.CancelFunc
	healthy  bool          // ps is subscribed to every wanted uid and answering
	lastErr  error         // why the last pub/sub connection ended
	draining chan struct{} // closed when Close has unsubscribed everything

	notify    chan struct{} // wakes the syncer; capacity 1
	stop      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup

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
var ErrBadURL = errors.New("invalid PUSHER_REDIS_URL: want redis://[user:password@]host:port[/db] or rediss://...") //nolint:revive,staticcheck // error-strings, ST1005: the "..." belongs to the URL, and operators see this text; not changed in the lint pass

// CheckURL reports whether rawURL names a Redis, without saying more of
// it than ErrBadURL does.
func CheckURL(rawURL string) error {
	if _, err := redis.ParseURL(rawURL); err != nil {
		return ErrBadURL
	}
	return nil
}

// New connects to cfg.URL and checks that Redis answers; errors name
// PUSHER_REDIS_URL and never show its password. Start runs the broker.
func New(ctx context.Context, cfg Config, local Local, log *slog.Logger, reg prometheus.Registerer) (*Broker, error) {
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, ErrBadURL
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
		rdb:        redis.NewClient(opt),
		local:      local,
		nodeID:     nodeID,
		log:        log,
		prefix:     cfg.Prefix + ":",
		cfg:        cfg,
		publish:    redis.NewScript(publishScript),
		confirmed:  map[string]struct{}{},
		inflight:   map[string]int{},
		waiters:    map[string][]chan struct{}{},
		last:       map[string]stream.Position{},
		repairing:  map[string]*repairState{},
		base:       map[string]stream.Position{},
		expected:   map[string]expectation{},
		workKick:   make(chan struct{}, 1),
		beatKick:   make(chan struct{}, 1),
		beatStop:   make(chan struct{}),
		beatDone:   make(chan struct{}),
		wanted:     map[string]struct{}{},
		pending:    map[string]bool{},
		subscribed: map[string]struct{}{},
		notify:     make(chan struct{}, 1),
		stop:       make(chan struct{}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_redis_published_total", Help: "Messages published to Redis (one per uid).",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_redis_received_total", Help: "Messages received from Redis (one per uid).",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pusher_redis_reconnects_total", Help: "Times the Redis pub/sub connection was lost and made again.",
		}),
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.rdb.Ping(pctx).Err(); err != nil {
		// The client has started nothing yet; its error is of no use.
		_ = b.rdb.Close()
		return nil, fmt.Errorf("PUSHER_REDIS_URL: redis at %s does not answer: %w", opt.Addr, err)
	}
	if err := b.publish.Load(pctx, b.rdb).Err(); err != nil {
		_ = b.rdb.Close()
		return nil, fmt.Errorf("PUSHER_REDIS_URL: load the publish script into redis at %s: %w", opt.Addr, err)
	}
	apOpt := *opt
	per := max(cfg.OpTimeout/4, 50*time.Millisecond)
	apOpt.DialTimeout, apOpt.PoolTimeout, apOpt.ReadTimeout, apOpt.WriteTimeout = per, per, per, per
	b.apc = redis.NewClient(&apOpt)
	if b.ap, err = b.apc.AutoPipeline(); err != nil {
		_ = b.rdb.Close()
		_ = b.apc.Close()
		return nil, fmt.Errorf("redis automatic pipelining: %w", err)
	}
	reg.MustRegister(b.published, b.received, b.reconnects, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_redis_subscriptions", Help: "uid channels this node is subscribed to.",
	}, func() float64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return float64(len(b.subscribed))
	}))
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// Start runs the pub/sub connection, the syncer and the repairer until
// Close.
func (b *Broker) Start() {
	b.wg.Add(3)
	go b.run()
	go b.syncLoop()
	go b.repairLoop()
	b.beating = true
	b.wg.Go(b.beatLoop)
}

func (b *Broker) channel(uid string) string  { return b.prefix + "u:" + uid }
func (b *Broker) stateKey(uid string) string { return b.prefix + "s:" + uid }
func (b *Broker) histKey(uid string) string  { return b.prefix + "h:" + uid }
func (b *Broker) idemKey(key string) string  { return b.prefix + "i:" + key }

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

// numSub counts the subscribers of uids' channels.
func (b *Broker) numSub(ctx context.Context, uids []string) (map[string]int64, error) {
	counts := make(map[string]int64, len(uids))
	err := inBatches(uids, func(batch []string) error {
		chs := make([]string, len(batch))
		for i, uid := range batch {
			chs[i] = b.channel(uid)
		}
		res, err := b.ap.PubSubNumSub(ctx, chs...).Result()
		for i, uid := range batch {
			counts[uid] = res[chs[i]]
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redis PUBSUB NUMSUB: %w", err)
	}
	return counts, nil
}

// recount counts the subscribers of uids' channels again, with the node
// check: ErrResyncing when one has none and some node is resubscribing.
func (b *Broker) recount(ctx context.Context, uids []string) (map[string]int64, error) {
	counts := make(map[string]int64, len(uids))
	err := inBatches(uids, func(batch []string) error {
		args := make([]any, 2, len(batch)+2)
		args[0], args[1] = b.prefix+"n:", nodeDeadAfter.Milliseconds()
		for _, uid := range batch {
			args = append(args, b.channel(uid))
		}
		res, err := lookup.Run(ctx, b.ap, []string{b.nodesKey()}, args...).Int64Slice()
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
		return nil, fmt.Errorf("redis lookup: %w", err)
	}
	return counts, nil
}

// Ready reports why the broker cannot route messages now, or nil.
func (b *Broker) Ready(ctx context.Context) error {
	b.mu.Lock()
	healthy, lastErr := b.healthy, b.lastErr
	b.mu.Unlock()
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if !healthy {
		if lastErr != nil {
			return fmt.Errorf("redis pub/sub not subscribed yet (last error: %w)", lastErr)
		}
		return errors.New("redis pub/sub not subscribed yet")
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
	b.mu.Lock()
	ps := b.ps
	drained := make(chan struct{})
	wait := ps != nil && len(b.subscribed) > 0
	if wait {
		b.draining = drained
	}
	b.mu.Unlock()
	if wait {
		d := maxDrain
		if dl, ok := ctx.Deadline(); ok {
			d = min(d, time.Until(dl)/3)
		}
		dctx, cancel := context.WithTimeout(ctx, d)
		if err := ps.Unsubscribe(dctx); err == nil {
			select {
			case <-drained:
			case <-dctx.Done():
			}
		}
		cancel()
	}

	close(b.stop)
	b.cancel() // ends the repairer's and the syncer's Redis calls
	b.mu.Lock()
	if b.ps != nil {
		// Ends the receiver's blocking read; its error is the receiver's.
		_ = b.ps.Close()
	}
	b.mu.Unlock()
	waited := make(chan struct{})
	go func() {
		b.wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
		// A call blocked on a hung Redis notices the cancellation only
		// at its read timeout; closing the client's connections ends it
		// now.
		_ = b.rdb.Close()
		<-waited
		_ = b.apc.Close()
		return ctx.Err()
	}
	// No request is under way: the server closes the broker after the
	// listeners. What apc's pipeliner still holds ends within its
	// timeouts.
	if err := errors.Join(b.rdb.Close(), b.apc.Close()); err != nil {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}
