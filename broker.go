package main

import (
	"context"

	"go-pusher/internal/cluster"
	"go-pusher/internal/history"
	"go-pusher/internal/stream"
)

// Broker carries an accepted message from /send to the connections of its
// uids: on this node only (localBroker, the default) or on every node of a
// cluster (cluster.Broker). The Hub stays the one owner of local
// connections; a broker only asks it to deliver.
type Broker interface {
	// The hub tells the broker when a uid gains its first open local
	// connection and loses its last (history marks the uid idle; cluster
	// mode subscribes and unsubscribes).
	hubEvents
	// Online splits uids into those with an open connection on some node
	// and those without, keeping their order.
	Online(ctx context.Context, uids []string) (online, offline []string, err error)
	// PublishAll gives the message of each of pubs, in order, the next
	// offset of each of its uids, stores it in their history and queues
	// it on all their connections, on every node. Each publication learns
	// the uids that turned out to have no connection anywhere (they went
	// away after Online): nothing was stored for them. An error means
	// some messages may not have reached some connections.
	PublishAll(ctx context.Context, pubs []*cluster.Publication) error
	// Replay returns what a connection of uid that has seen everything up
	// to since missed, in offset order, and whether history holds all of
	// it. The connection is registered (and held) already, so anything
	// newer reaches it live.
	Replay(ctx context.Context, uid string, since stream.Position) ([]stream.Item, bool)
	// Expect is called before a connection of uid registers here, so that
	// nothing published after the registration is lost while the broker
	// starts routing uid to this node. It does not fail: at worst the
	// broker notes less.
	Expect(ctx context.Context, uid string)
	// Subscribed returns once this node's routing of uid is in place (at
	// once on a single node), or with ctx's error.
	Subscribed(ctx context.Context, uid string) error
	// Disconnect closes every connection of uids, on every node, with
	// 1008 and reason; it returns the uids that had one and the others.
	Disconnect(ctx context.Context, uids []string, reason string) (disconnected, notFound []string, err error)
	// Ready reports why the broker cannot route messages now, or nil.
	Ready(ctx context.Context) error
	// Start runs the broker's goroutines; Close stops them. Messages that
	// reached the broker before Close are handed to the hub first.
	Start()
	Close(ctx context.Context) error
}

var (
	_ Broker = localBroker{}
	_ Broker = (*cluster.Broker)(nil)
)

// localBroker routes within this process: the article's single node. It
// keeps the uids' history in memory.
type localBroker struct {
	hub  *Hub
	hist *history.Memory
}

func (b localBroker) UserOnline(uid string) { b.hist.UserOnline(uid) }

func (b localBroker) UserOffline(uid string) { b.hist.UserOffline(uid) }

func (b localBroker) Online(_ context.Context, uids []string) (online, offline []string, err error) {
	for _, uid := range uids {
		if b.hub.Open(uid) {
			online = append(online, uid)
		} else {
			offline = append(offline, uid)
		}
	}
	return online, offline, nil
}

// PublishAll ignores the publications' idempotency claims: on a single
// node the claim is the process's own, held until this request ends.
func (b localBroker) PublishAll(_ context.Context, pubs []*cluster.Publication) error {
	for _, p := range pubs {
		p.Gone = b.hist.Publish(p.Message, p.UIDs)
	}
	return nil
}

func (b localBroker) Replay(_ context.Context, uid string, since stream.Position) ([]stream.Item, bool) {
	return b.hist.Since(uid, since)
}

func (b localBroker) Disconnect(_ context.Context, uids []string, reason string) (disconnected, notFound []string, err error) {
	for _, uid := range uids {
		if b.hub.Open(uid) {
			b.hub.Disconnect(uid, reason)
			disconnected = append(disconnected, uid)
		} else {
			notFound = append(notFound, uid)
		}
	}
	return disconnected, notFound, nil
}

// Subscribed: the hub is the whole routing, in place at registration.
func (localBroker) Subscribed(context.Context, string) error { return nil }

// Expect has nothing to do: the hub is the whole routing.
func (localBroker) Expect(context.Context, string) {}

func (localBroker) Ready(context.Context) error { return nil }

func (b localBroker) Start() { b.hist.Start() }

func (b localBroker) Close(context.Context) error {
	b.hist.Close()
	return nil
}
