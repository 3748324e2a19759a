package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
)

// This file is the pub/sub half of the broker: the one connection
// per node, its reconnection, the syncer that batches SUBSCRIBE and
// UNSUBSCRIBE, and the delivery of what Redis sends.

// run keeps s's pub/sub connection alive, making a new one with backoff
// when it fails, until Close or until s is retired (topology.go).
func (b *Broker) run(s *shard) {
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := b.session(s)
		select {
		case <-b.stop:
			return
		case <-s.retired:
			return
		default:
		}
		if time.Since(start) > 30*time.Second {
			backoff = 100 * time.Millisecond
		}
		b.reconnects.Inc()
		b.log.Warn("redis pub/sub connection lost; reconnecting", "redis", s.addr, "err", err, "retry_in", backoff)
		b.failed(err)
		select {
		case <-b.stop:
			return
		case <-s.retired:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// session runs one pub/sub connection of s: connect, have the syncer
// subscribe every wanted uid of s, then receive until the connection
// fails, s is retired, or Close.
func (b *Broker) session(s *shard) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ps := s.rdb.Subscribe(ctx)
	b.mu.Lock()
	select {
	case <-b.stop:
		b.mu.Unlock()
		return ps.Close()
	case <-s.retired:
		b.mu.Unlock()
		return ps.Close()
	default:
	}
	s.ps = ps
	b.forgetSubscriptions(s)
	rt := b.routes.Load()
	for uid := range b.wanted {
		if rt.forKey(b.channel(uid)) != s {
			continue
		}
		b.pending[uid] = true
		if b.repairFrom(uid) != nil && s.lostLink {
			// Messages for uid may have been published while this node
			// was not subscribed: hold what arrives until repair.
			b.hold(uid).lost = true
		}
	}
	b.mu.Unlock()

	err := b.receive(ctx, s, ps)
	b.mu.Lock()
	s.ps, s.healthy, s.lostLink = nil, false, true
	if s.draining == nil {
		s.lastErr = err
	}
	// Its uids wait for the next connection, to s or, if s is retired
	// meanwhile, to their slot's new master: either way what is published
	// until then is repaired.
	for uid := range s.subscribed {
		b.lost(uid, s)
	}
	b.forgetSubscriptions(s)
	if s.draining != nil {
		close(s.draining)
		s.draining = nil
	}
	b.mu.Unlock()
	// Closing an already failed connection reports that failure again.
	_ = ps.Close()
	return err
}

// lost records that uid's subscription on s is gone (its connection
// ended, its slot moved, Redis dropped it): the uid is subscribed again
// where its slot is served, and what was published meanwhile is
// repaired. Callers hold mu.
func (b *Broker) lost(uid string, s *shard) {
	b.unassign(uid, s)
	if _, ok := b.wanted[uid]; ok {
		b.pending[uid] = true
		if b.repairFrom(uid) != nil {
			b.hold(uid).lost = true
		}
	}
}

// forgetSubscriptions forgets what s's pub/sub connection was asked:
// its uids are subscribed again on the next. Callers hold mu.
func (b *Broker) forgetSubscriptions(s *shard) {
	for uid := range s.subscribed {
		b.unassign(uid, s)
	}
	s.nodeSubscribed, s.nodeUp = false, false
	clear(s.inflight)
}

func (b *Broker) receive(ctx context.Context, s *shard, ps *redis.PubSub) error {
	if err := ps.Ping(ctx); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// Redis is back: register again at once (it may have lost the nodes
	// hash), so that others are unsure until this node has resubscribed.
	select {
	case b.beatKick <- struct{}{}:
	default:
	}
	b.kick()
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, healthInterval)
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
			b.answered(s, m)
		}
	}
}

// answered records Redis's answer to a SUBSCRIBE or UNSUBSCRIBE (or
// their sharded forms). A channel counts as subscribed only once every
// command sent for it is answered and the last was a SUBSCRIBE: a
// "subscribe" answer to an older command, arriving after an UNSUBSCRIBE
// was sent, does not count. An unsubscribe nobody asked for is a Redis
// Cluster taking the channel's slot away from this master: the uid
// moves to its new master and is repaired.
func (b *Broker) answered(s *shard, m *redis.Subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	asked := s.inflight[m.Channel] > 0
	n := s.inflight[m.Channel] - 1
	if n > 0 {
		s.inflight[m.Channel] = n
	} else {
		delete(s.inflight, m.Channel)
	}
	subscribe := m.Kind == "subscribe" || m.Kind == "ssubscribe"
	if m.Channel == b.nodeChannel() {
		s.nodeUp = subscribe
		if s.nodeUp {
			select {
			case b.beatKick <- struct{}{}:
			default: // a beat is due already
			}
		}
		b.drained(s, m)
		return
	}
	switch {
	case subscribe:
		if n <= 0 {
			b.confirmed[m.Channel] = struct{}{}
			for _, w := range b.waiters[m.Channel] {
				close(w)
			}
			delete(b.waiters, m.Channel)
			if uid, ok := b.uidOf(m.Channel); ok && b.repairing[uid] != nil {
				select {
				case b.workKick <- struct{}{}: // its repair can run now
				default:
				}
			}
		}
	default:
		b.drained(s, m)
		uid, ok := b.uidOf(m.Channel)
		if !ok {
			return
		}
		if cur := b.assigned[uid]; cur == nil || cur == s {
			// Not when the uid moved on to another master meanwhile:
			// its subscription there stands.
			delete(b.confirmed, m.Channel)
		}
		if asked || s.draining != nil || b.assigned[uid] != s {
			return
		}
		b.lost(uid, s)
		b.kickTopology()
	}
}

// drained tells Close when the unsubscribe from everything is done.
func (b *Broker) drained(s *shard, m *redis.Subscription) {
	if (m.Kind == "unsubscribe" || m.Kind == "sunsubscribe") && m.Count == 0 && s.draining != nil {
		close(s.draining)
		s.draining = nil
	}
}

// uidOf is the uid of a uid channel.
func (b *Broker) uidOf(channel string) (string, bool) {
	t, ok := strings.CutPrefix(channel, b.prefix+"u:")
	if !ok {
		return "", false
	}
	return b.untag(t)
}

// handle delivers a message from Redis to this node's connections of its
// uid. Redis sends a channel's messages in the order the publish script
// ran, which is offset order.
func (b *Broker) handle(rm *redis.Message) {
	b.received.Inc()
	uid, ok := b.uidOf(rm.Channel)
	if !ok {
		return
	}
	if strings.HasPrefix(rm.Payload, "!") {
		b.mu.Lock()
		defer b.mu.Unlock()
		if !b.control(uid, rm.Payload) {
			b.log.Warn("unknown control message from redis", "channel", rm.Channel)
		}
		return
	}
	pos, tail, ok := strings.Cut(rm.Payload, "|")
	p, err := stream.ParsePosition(pos)
	if !ok || err != nil {
		b.log.Warn("malformed message from redis", "channel", rm.Channel)
		return
	}
	m, err := decodeEnvelope(tail)
	if err != nil {
		b.log.Warn("malformed message from redis", "channel", rm.Channel, "err", err)
		return
	}
	it := stream.Item{M: m, Off: p.N, Epoch: p.Epoch}
	// Under mu, so that a repair's delivery and this one keep their order.
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.wanted[uid]; !ok {
		// Published before this node's UNSUBSCRIBE took effect: no open
		// connection here wants it (the hub records it as failed for
		// uid), and its position must not outlive the subscription (the
		// uid's next connection would be repaired from it, and sent old
		// history).
		b.local.Deliver(uid, it)
		return
	}
	if st, held := b.repairing[uid]; held {
		st.held = append(st.held, it)
		return
	}
	if l, ok := b.last[uid]; ok && l.Epoch == it.Epoch && it.Off <= l.N {
		// A repair delivered it from history already: Redis sends a
		// channel's messages in offset order, so nothing newer is lost.
		return
	}
	b.deliverLocked(uid, it)
}

// hold starts holding uid's messages from Redis until a repair, and
// returns its state. Callers hold mu.
func (b *Broker) hold(uid string) *repairState {
	st := b.repairing[uid]
	if st == nil {
		st = &repairState{}
		b.repairing[uid] = st
	}
	return st
}

// repairFrom is where a repair of uid starts: after the last message
// delivered here, or else after its baseline; nil when neither is known.
// Callers hold mu.
func (b *Broker) repairFrom(uid string) *stream.Position {
	if p, ok := b.last[uid]; ok {
		return &p
	}
	if p, ok := b.base[uid]; ok {
		return &p
	}
	return nil
}

// deliverLocked hands it to uid's connections on this node.
func (b *Broker) deliverLocked(uid string, it stream.Item) {
	b.last[uid] = it.Pos()
	delete(b.base, uid)
	b.local.Deliver(uid, it)
}

// syncLoop applies subscription changes in batches until Close.
func (b *Broker) syncLoop() {
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

func (b *Broker) sync() {
	type change struct {
		ps          *redis.PubSub
		add, remove []string // channels
		node        string   // the node channel, after the session's first uids
	}
	changes := map[*shard]*change{}
	changeOf := func(s *shard) *change {
		c := changes[s]
		if c == nil {
			c = &change{ps: s.ps}
			changes[s] = c
		}
		return c
	}
	b.mu.Lock()
	rt := b.routes.Load()
	var adds []string
	for uid, on := range b.pending {
		cur := b.assigned[uid]
		ch := b.channel(uid)
		target := rt.forKey(ch)
		if cur != nil && (!on || cur != target) {
			// Off, or its slot moved: leave the old master (a failed
			// one's connection is gone already).
			b.unassign(uid, cur)
			if cur.ps != nil {
				c := changeOf(cur)
				c.remove = append(c.remove, ch)
				cur.inflight[ch]++
			}
		}
		if !on {
			// Subscribed or not (an outage, a session just begun), the uid
			// has no connection here any more: nothing to repair for it.
			delete(b.last, uid)
			delete(b.base, uid)
			delete(b.repairing, uid)
			delete(b.pending, uid)
			continue
		}
		if cur == target {
			delete(b.pending, uid)
			continue
		}
		if target.ps == nil {
			continue // subscribed when target's connection is up
		}
		c := changeOf(target)
		c.add = append(c.add, ch)
		adds = append(adds, ch)
		target.subscribed[uid] = struct{}{}
		b.assigned[uid] = target
		target.inflight[ch]++
		b.hold(uid)
		delete(b.pending, uid)
	}
	// The node channel goes after the uid channels of the session's first
	// sync: its subscriber tells other nodes that this one's uids are in
	// place (nodes.go).
	for _, s := range rt.shards {
		if s.ps != nil && !s.nodeSubscribed {
			s.nodeSubscribed = true
			changeOf(s).node = b.nodeChannel()
			s.inflight[b.nodeChannel()]++
		}
	}
	for uid, e := range b.expected {
		if time.Since(e.at) >= maxExpectationAge {
			delete(b.expected, uid) // its connection never came
		}
	}
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(b.ctx, healthInterval)
	defer cancel()
	b.takeBaselines(ctx, adds)
	for s, c := range changes {
		if err := b.apply(ctx, c.ps, c.add, c.remove, c.node); err != nil {
			// The receiver sees the same failure and starts a new
			// connection, which subscribes every wanted uid again.
			b.log.Warn("redis subscribe failed", "redis", s.addr, "err", err)
			_ = c.ps.Close()
		}
	}
	b.mu.Lock()
	waiting := map[*shard]bool{}
	for uid := range b.pending {
		waiting[rt.forKey(b.channel(uid))] = true
	}
	for _, s := range rt.shards {
		s.healthy = s.ps != nil && !waiting[s]
	}
	work := len(b.repairing) > 0
	b.mu.Unlock()
	if work {
		select {
		case b.workKick <- struct{}{}:
		default: // the repairer is awake already
		}
	}
}

// apply sends one shard's subscription changes: SUBSCRIBE and
// UNSUBSCRIBE in batches, or on a Redis Cluster their sharded forms, a
// command per hash slot (a sharded command's channels share one).
func (b *Broker) apply(ctx context.Context, ps *redis.PubSub, add, remove []string, node string) error {
	sub, unsub := ps.Subscribe, ps.Unsubscribe
	if b.clustered {
		sub, unsub = ps.SSubscribe, ps.SUnsubscribe
	}
	for _, op := range []struct {
		chs []string
		f   func(context.Context, ...string) error
	}{{add, sub}, {remove, unsub}} {
		for _, group := range b.slotGroups(op.chs) {
			if err := inBatches(group, func(chs []string) error { return op.f(ctx, chs...) }); err != nil {
				return err
			}
		}
	}
	if node != "" {
		return ps.Subscribe(ctx, node) // a plain channel: PUBSUB NUMSUB counts it on this master
	}
	return nil
}

// slotGroups splits channels by hash slot on a Redis Cluster; on a
// single Redis they are one group.
func (b *Broker) slotGroups(chs []string) [][]string {
	if len(chs) == 0 {
		return nil
	}
	if !b.clustered {
		return [][]string{chs}
	}
	bySlot := map[int][]string{}
	var order []int
	for _, ch := range chs {
		slot := keySlot(ch)
		if _, ok := bySlot[slot]; !ok {
			order = append(order, slot)
		}
		bySlot[slot] = append(bySlot[slot], ch)
	}
	out := make([][]string, len(order))
	for i, slot := range order {
		out[i] = bySlot[slot]
	}
	return out
}
