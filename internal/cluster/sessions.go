package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is session control across the cluster: POST /disconnect
// closes a uid's connections on every node through the uid's own channel
// (so that it comes after the messages published before it), and token
// revocations live in Redis, so that every node refuses them.

// disconnectPrefix starts a control message on a uid's channel: the
// uid's connections are closed with 1008 and the reason that follows. A
// message's payload starts with its position, never with '!'.
const disconnectPrefix = "!d|"

// Disconnect closes every connection of uids, on every node, with 1008
// and reason. It returns the uids that had a connection somewhere and
// the others.
func (b *Broker) Disconnect(ctx context.Context, uids []string, reason string) (disconnected, notFound []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	// Online, with its node check: a uid without a subscriber while some
	// node resubscribes is ErrResyncing (a 503), not "not found".
	disconnected, notFound, err = b.Online(ctx, uids)
	if err != nil {
		return nil, nil, err
	}
	payload := disconnectPrefix + reason
	err = b.pipelined(ctx, len(disconnected), func(i int) string { return b.channel(disconnected[i]) }, func(p redis.Pipeliner, i int) {
		if b.clustered {
			p.SPublish(ctx, b.channel(disconnected[i]), payload)
		} else {
			p.Publish(ctx, b.channel(disconnected[i]), payload)
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("redis publish disconnect: %w", err)
	}
	return disconnected, notFound, nil
}

// Subscribed returns once this node's subscription to uid's channel is
// confirmed, or with ctx's error.
func (b *Broker) Subscribed(ctx context.Context, uid string) error {
	return b.waitSubscribed(ctx, uid)
}

// control handles a control message of uid's channel; it reports
// whether payload was one. Callers hold mu.
func (b *Broker) control(uid, payload string) bool {
	reason, ok := strings.CutPrefix(payload, disconnectPrefix)
	if !ok {
		return false
	}
	b.local.Disconnect(uid, reason)
	return true
}

func (b *Broker) revokedKey(uid string) string { return b.prefix + "r:" + b.tag(uid) }

// Revoke records in Redis, for ttl, that uids' tokens up to at are
// revoked.
func (b *Broker) Revoke(ctx context.Context, uids []string, at time.Time, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	v := strconv.FormatInt(at.UnixMilli(), 10)
	err := b.pipelined(ctx, len(uids), func(i int) string { return b.revokedKey(uids[i]) }, func(p redis.Pipeliner, i int) {
		p.Set(ctx, b.revokedKey(uids[i]), v, ttl)
	})
	if err != nil {
		return fmt.Errorf("redis revoke: %w", err)
	}
	return nil
}

// RevokedAt returns when uid's tokens were revoked, if that is still
// remembered.
func (b *Broker) RevokedAt(ctx context.Context, uid string) (time.Time, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	s := b.shardOf(uid)
	if s.rdb == nil {
		return time.Time{}, false, errNoMaster
	}
	v, err := s.ap.Get(ctx, b.revokedKey(uid)).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("redis revocation of %q: %w", uid, err)
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("redis revocation of %q: %q is not a time", uid, v)
	}
	return time.UnixMilli(ms), true, nil
}
