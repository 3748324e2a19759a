package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
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
	// uid; after a lost pub/sub connection, repairing holds each uid's
	// messages until what it missed meanwhile is delivered (see repair).
	last      map[string]position
	repairing map[string][]qitem
	lostLink  bool          // a pub/sub connection was lost: the next one repairs
	healthy   bool          // ps is subscribed to every wanted uid and answering
	lastErr   error         // why the last pub/sub connection ended
	draining  chan struct{} // closed when Close has unsubscribed everything

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
		repairing:  map[string][]qitem{},
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
	return b, nil
}

// Start runs the pub/sub connection and the syncer until Close.
func (b *RedisBroker) Start() {
	b.wg.Add(2)
	go b.run()
	go b.syncLoop()
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

// run keeps one pub/sub connection alive, making a new one with backoff
// when it fails, until Close.
func (b *RedisBroker) run() {
	defer b.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := b.session()
		select {
		case <-b.stop:
			return
		default:
		}
		if time.Since(start) > 30*time.Second {
			backoff = 100 * time.Millisecond
		}
		b.reconnects.Inc()
		b.log.Warn("redis pub/sub connection lost; reconnecting", "err", err, "retry_in", backoff)
		select {
		case <-b.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, redisMaxBackoff)
	}
}

// session runs one pub/sub connection: connect, have the syncer subscribe
// every wanted uid, then receive until the connection fails or Close.
func (b *RedisBroker) session() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ps := b.rdb.Subscribe(ctx)
	b.mu.Lock()
	select {
	case <-b.stop:
		b.mu.Unlock()
		return ps.Close()
	default:
	}
	b.ps = ps
	b.subscribed = map[string]struct{}{}
	for uid := range b.wanted {
		b.pending[uid] = true
		if _, ok := b.last[uid]; ok && b.lostLink {
			// Messages for uid may have been published while this node
			// was not subscribed: hold what arrives until repair.
			if _, held := b.repairing[uid]; !held {
				b.repairing[uid] = nil
			}
		}
	}
	b.mu.Unlock()

	err := b.receive(ctx, ps)
	b.mu.Lock()
	b.ps, b.healthy, b.lastErr, b.lostLink = nil, false, err, true
	b.subscribed = map[string]struct{}{}
	clear(b.confirmed)
	clear(b.inflight)
	b.mu.Unlock()
	// Closing an already failed connection reports that failure again.
	_ = ps.Close()
	return err
}

func (b *RedisBroker) receive(ctx context.Context, ps *redis.PubSub) error {
	if err := ps.Ping(ctx); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	b.kick()
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, redisHealthInterval)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !pinged {
				if err := ps.Ping(ctx); err != nil {
					return fmt.Errorf("ping: %w", err)
				}
				pinged = true
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			b.handle(m)
		case *redis.Pong:
			b.kick() // the syncer marks the connection healthy once it is in step
		case *redis.Subscription:
			b.answered(m)
		}
	}
}

// answered records Redis's answer to a SUBSCRIBE or UNSUBSCRIBE. A channel
// counts as subscribed only once every command sent for it is answered
// and the last was a SUBSCRIBE: a "subscribe" answer to an older command,
// arriving after an UNSUBSCRIBE was sent, does not count.
func (b *RedisBroker) answered(m *redis.Subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.inflight[m.Channel] - 1
	if n > 0 {
		b.inflight[m.Channel] = n
	} else {
		delete(b.inflight, m.Channel)
	}
	switch m.Kind {
	case "subscribe":
		if n <= 0 {
			b.confirmed[m.Channel] = struct{}{}
			for _, w := range b.waiters[m.Channel] {
				close(w)
			}
			delete(b.waiters, m.Channel)
		}
	case "unsubscribe":
		delete(b.confirmed, m.Channel)
		if m.Count == 0 && b.draining != nil {
			close(b.draining)
			b.draining = nil
		}
	}
}

// handle delivers a message from Redis to this node's connections of its
// uid. Redis sends a channel's messages in the order the publish script
// ran, which is offset order.
func (b *RedisBroker) handle(rm *redis.Message) {
	b.received.Inc()
	uid, ok := strings.CutPrefix(rm.Channel, b.prefix+"u:")
	if !ok {
		return
	}
	pos, tail, ok := strings.Cut(rm.Payload, "|")
	p, err := parsePosition(pos)
	if !ok || err != nil {
		b.log.Warn("malformed message from redis", "channel", rm.Channel)
		return
	}
	m, err := decodeEnvelope(tail)
	if err != nil {
		b.log.Warn("malformed message from redis", "channel", rm.Channel, "err", err)
		return
	}
	it := qitem{m: m, off: p.n, epoch: p.epoch}
	// Under mu, so that a repair's delivery and this one keep their order.
	b.mu.Lock()
	defer b.mu.Unlock()
	if buf, held := b.repairing[uid]; held {
		b.repairing[uid] = append(buf, it)
		return
	}
	b.deliverLocked(uid, it)
}

// deliverLocked hands it to uid's connections on this node.
func (b *RedisBroker) deliverLocked(uid string, it qitem) {
	b.last[uid] = position{it.epoch, it.off}
	if cs := b.hub.clients(uid); len(cs) > 0 {
		b.hub.deliver(uid, cs, it)
	}
}

// syncLoop applies subscription changes in batches until Close.
func (b *RedisBroker) syncLoop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case <-b.notify:
		}
		b.sync()
	}
}

func (b *RedisBroker) sync() {
	b.mu.Lock()
	ps := b.ps
	if ps == nil {
		b.mu.Unlock()
		return
	}
	var add, remove []string
	for uid, on := range b.pending {
		_, sub := b.subscribed[uid]
		ch := b.channel(uid)
		switch {
		case on && !sub:
			add = append(add, ch)
			b.subscribed[uid] = struct{}{}
			b.inflight[ch]++
		case !on && sub:
			remove = append(remove, ch)
			delete(b.subscribed, uid)
			b.inflight[ch]++
			delete(b.confirmed, ch)
			delete(b.last, uid)
			delete(b.repairing, uid)
		}
	}
	clear(b.pending)
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), redisHealthInterval)
	defer cancel()
	err := inBatches(add, func(chs []string) error { return ps.Subscribe(ctx, chs...) })
	if err == nil {
		err = inBatches(remove, func(chs []string) error { return ps.Unsubscribe(ctx, chs...) })
	}
	if err != nil {
		// The receiver sees the same failure and starts a new connection,
		// which subscribes every wanted uid again.
		b.log.Warn("redis subscribe failed", "err", err)
		_ = ps.Close()
		return
	}
	b.mu.Lock()
	if b.ps == ps && len(b.pending) == 0 {
		b.healthy = true
	}
	var repair []string
	for uid := range b.repairing {
		repair = append(repair, uid)
	}
	b.mu.Unlock()
	for _, uid := range repair {
		b.repair(uid)
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
