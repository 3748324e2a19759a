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

// run keeps one pub/sub connection alive, making a new one with backoff
// when it fails, until Close.
func (b *Broker) run() {
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
		backoff = min(2*backoff, maxBackoff)
	}
}

// session runs one pub/sub connection: connect, have the syncer subscribe
// every wanted uid, then receive until the connection fails or Close.
func (b *Broker) session() error {
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
	b.nodeSubscribed, b.nodeUp = false, false
	for uid := range b.wanted {
		b.pending[uid] = true
		if b.repairFrom(uid) != nil && b.lostLink {
			// Messages for uid may have been published while this node
			// was not subscribed: hold what arrives until repair.
			b.hold(uid).lost = true
		}
	}
	b.mu.Unlock()

	err := b.receive(ctx, ps)
	b.mu.Lock()
	b.ps, b.healthy, b.lastErr, b.lostLink = nil, false, err, true
	b.nodeSubscribed, b.nodeUp = false, false
	b.subscribed = map[string]struct{}{}
	clear(b.confirmed)
	clear(b.inflight)
	b.mu.Unlock()
	// Closing an already failed connection reports that failure again.
	_ = ps.Close()
	return err
}

func (b *Broker) receive(ctx context.Context, ps *redis.PubSub) error {
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
			b.answered(m)
		}
	}
}

// answered records Redis's answer to a SUBSCRIBE or UNSUBSCRIBE. A channel
// counts as subscribed only once every command sent for it is answered
// and the last was a SUBSCRIBE: a "subscribe" answer to an older command,
// arriving after an UNSUBSCRIBE was sent, does not count.
func (b *Broker) answered(m *redis.Subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.inflight[m.Channel] - 1
	if n > 0 {
		b.inflight[m.Channel] = n
	} else {
		delete(b.inflight, m.Channel)
	}
	if m.Channel == b.nodeChannel() {
		b.nodeUp = m.Kind == "subscribe"
		if b.nodeUp {
			select {
			case b.beatKick <- struct{}{}:
			default: // a beat is due already
			}
		}
		b.drained(m)
		return
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
		b.drained(m)
	}
}

// drained tells Close when the unsubscribe from everything is done.
func (b *Broker) drained(m *redis.Subscription) {
	if m.Kind == "unsubscribe" && m.Count == 0 && b.draining != nil {
		close(b.draining)
		b.draining = nil
	}
}

// handle delivers a message from Redis to this node's connections of its
// uid. Redis sends a channel's messages in the order the publish script
// ran, which is offset order.
func (b *Broker) handle(rm *redis.Message) {
	b.received.Inc()
	uid, ok := strings.CutPrefix(rm.Channel, b.prefix+"u:")
	if !ok {
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
			b.hold(uid)
		case !on && sub:
			remove = append(remove, ch)
			delete(b.subscribed, uid)
			b.inflight[ch]++
			delete(b.confirmed, ch)
		}
		if !on {
			// Subscribed or not (an outage, a session just begun), the uid
			// has no connection here any more: nothing to repair for it.
			delete(b.last, uid)
			delete(b.base, uid)
			delete(b.repairing, uid)
		}
	}
	clear(b.pending)
	// The node channel goes after the uid channels of the session's first
	// sync: its subscriber tells other nodes that this one's uids are in
	// place (nodes.go).
	var node string
	if !b.nodeSubscribed {
		b.nodeSubscribed = true
		node = b.nodeChannel()
		b.inflight[node]++
	}
	for uid, e := range b.expected {
		if time.Since(e.at) >= maxExpectationAge {
			delete(b.expected, uid) // its connection never came
		}
	}
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(b.ctx, healthInterval)
	defer cancel()
	b.takeBaselines(ctx, add)
	err := inBatches(add, func(chs []string) error { return ps.Subscribe(ctx, chs...) })
	if err == nil {
		err = inBatches(remove, func(chs []string) error { return ps.Unsubscribe(ctx, chs...) })
	}
	if err == nil && node != "" {
		err = ps.Subscribe(ctx, node)
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
	work := len(b.repairing) > 0
	b.mu.Unlock()
	if work {
		select {
		case b.workKick <- struct{}{}:
		default: // the repairer is awake already
		}
	}
}
