package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const (
	// redisBatch bounds the channels of one SUBSCRIBE, UNSUBSCRIBE or
	// PUBSUB NUMSUB, and the commands of one pipeline.
	redisBatch = 1000
	// redisHealthInterval: a pub/sub connection silent this long is pinged;
	// silent for another such period, it is taken for dead and replaced.
	redisHealthInterval = 5 * time.Second
	// redisMaxBackoff caps the wait between reconnection attempts.
	redisMaxBackoff = 5 * time.Second
)

// RedisBroker routes messages through Redis pub/sub: cluster mode.
//
// A node subscribes to the channel of a uid while it holds at least one
// connection of that uid, on one pub/sub connection, with SUBSCRIBE and
// UNSUBSCRIBE batched by a syncer goroutine that applies the difference
// between the uids the hub has (wanted) and those subscribed. /send asks
// PUBSUB NUMSUB who is online and publishes one message per uid.
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
type RedisBroker struct {
	rdb     *redis.Client
	hub     *Hub
	log     *slog.Logger
	prefix  string // channel of uid u is prefix + "u:" + u; keys prefix + "s:" and "h:"
	hist    historyLimits
	publish *redis.Script
	// opTimeout bounds a publish, all its batches together: the server's
	// -message-log-timeout, the wait /send allows itself.
	opTimeout time.Duration

	mu         sync.Mutex
	wanted     map[string]struct{} // uids with a local connection
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
	last      map[string]position
	repairing map[string]*repairState
	lostLink  bool // a pub/sub connection was lost: the next one repairs
	// base is a uid's offset read just before this node subscribed to
	// it: where a repair starts for a uid that has had no message here
	// yet. Unlike last it says nothing of what was delivered.
	base     map[string]position
	workKick chan struct{} // wakes the repairer; capacity 1

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
	recovered  *prometheus.CounterVec
}

var _ Broker = (*RedisBroker)(nil)

// repairState is a uid whose messages from Redis are held until a repair.
type repairState struct {
	held []qitem
	lost bool // after a lost connection: if history cannot fill the gap, say so
}

// newRedisBroker connects to rawURL and checks that Redis answers; errors
// name PUSHER_REDIS_URL and never show its password. Start runs it.
func newRedisBroker(ctx context.Context, rawURL, prefix string, hist historyLimits, opTimeout time.Duration, hub *Hub, log *slog.Logger, reg prometheus.Registerer) (*RedisBroker, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, errors.New("invalid PUSHER_REDIS_URL: want redis://[user:password@]host:port[/db] or rediss://...")
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
	b := &RedisBroker{
		rdb:        redis.NewClient(opt),
		hub:        hub,
		log:        log,
		prefix:     prefix + ":",
		hist:       hist,
		opTimeout:  opTimeout,
		publish:    redis.NewScript(publishScript),
		confirmed:  map[string]struct{}{},
		inflight:   map[string]int{},
		waiters:    map[string][]chan struct{}{},
		last:       map[string]position{},
		repairing:  map[string]*repairState{},
		base:       map[string]position{},
		workKick:   make(chan struct{}, 1),
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
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pusher_recoveries_total",
			Help: "Reconnections with ?since=, by result: recovered (replayed without a gap) or failed ({\"recovered\": false}).",
		}, []string{"result"}),
	}
	for _, r := range []string{"recovered", "failed"} {
		b.recovered.WithLabelValues(r)
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
	reg.MustRegister(b.published, b.received, b.reconnects, b.recovered, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pusher_redis_subscriptions", Help: "uid channels this node is subscribed to.",
	}, func() float64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return float64(len(b.subscribed))
	}))
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// Start runs the pub/sub connection and the syncer until Close.
func (b *RedisBroker) Start() {
	b.wg.Add(3)
	go b.run()
	go b.syncLoop()
	go b.repairLoop()
}

func (b *RedisBroker) channel(uid string) string  { return b.prefix + "u:" + uid }
func (b *RedisBroker) stateKey(uid string) string { return b.prefix + "s:" + uid }
func (b *RedisBroker) histKey(uid string) string  { return b.prefix + "h:" + uid }

// UserOnline implements hubEvents. It never blocks: the syncer subscribes.
func (b *RedisBroker) UserOnline(uid string) { b.want(uid, true) }

// UserOffline implements hubEvents.
func (b *RedisBroker) UserOffline(uid string) { b.want(uid, false) }

func (b *RedisBroker) want(uid string, on bool) {
	b.mu.Lock()
	if on {
		b.wanted[uid] = struct{}{}
	} else {
		delete(b.wanted, uid)
	}
	b.pending[uid] = on
	b.mu.Unlock()
	b.kick()
}

func (b *RedisBroker) kick() {
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

// Online implements Broker: a uid is online when some node, this one
// included, is subscribed to its channel.
func (b *RedisBroker) Online(ctx context.Context, uids []string) (online, offline []string, err error) {
	counts := make(map[string]int64, len(uids))
	err = inBatches(uids, func(batch []string) error {
		chs := make([]string, len(batch))
		for i, uid := range batch {
			chs[i] = b.channel(uid)
		}
		res, err := b.rdb.PubSubNumSub(ctx, chs...).Result()
		for ch, n := range res {
			counts[ch] = n
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("redis PUBSUB NUMSUB: %w", err)
	}
	for _, uid := range uids {
		if counts[b.channel(uid)] > 0 {
			online = append(online, uid)
		} else {
			offline = append(offline, uid)
		}
	}
	return online, offline, nil
}

// Ready implements Broker.
func (b *RedisBroker) Ready(ctx context.Context) error {
	b.mu.Lock()
	healthy, lastErr := b.healthy, b.lastErr
	b.mu.Unlock()
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if !healthy {
		if lastErr != nil {
			return fmt.Errorf("redis pub/sub not subscribed yet (last error: %v)", lastErr)
		}
		return errors.New("redis pub/sub not subscribed yet")
	}
	return nil
}

// Close unsubscribes from every channel, so that other nodes stop
// counting this one, hands the messages Redis sent before that to the hub,
// then stops the goroutines and closes the client.
func (b *RedisBroker) Close(ctx context.Context) error {
	var err error
	b.closeOnce.Do(func() { err = b.close(ctx) })
	return err
}

// maxDrain bounds how long Close waits for Redis to confirm the
// unsubscribe: a hung Redis must not eat the time the connections need
// for their flush and 1001.
const maxDrain = 2 * time.Second

func (b *RedisBroker) close(ctx context.Context) error {
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
		// Ends the receiver's blocking read.
		_ = b.ps.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	if err := b.rdb.Close(); err != nil {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}
