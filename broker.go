package main

import "context"

// Broker carries an accepted message from /send to the connections of its
// uids: on this node only (localBroker, the default) or on every node of a
// cluster (RedisBroker). The Hub stays the one owner of local connections;
// a broker only asks it to deliver.
type Broker interface {
	// The hub tells the broker when a uid gains its first local connection
	// and loses its last (cluster mode subscribes and unsubscribes).
	hubEvents
	// Online splits uids into those with a connection on some node and
	// those without, keeping their order.
	Online(ctx context.Context, uids []string) (online, offline []string, err error)
	// Publish gives m the next offset of each of uids, stores it in their
	// history and queues it on all their connections, on every node. It
	// returns the uids that turned out to have no connection anywhere
	// (they went away after Online): nothing was stored for them. An error
	// means m may not have reached some connections.
	Publish(ctx context.Context, m *Message, uids []string) (gone []string, err error)
	// Replay returns what a connection of uid that has seen everything up
	// to since missed, in offset order, and whether history holds all of
	// it. The connection is registered (and held) already, so anything
	// newer reaches it live.
	Replay(ctx context.Context, uid string, since position) ([]qitem, bool)
	// Ready reports why the broker cannot route messages now, or nil.
	Ready(ctx context.Context) error
	// Close stops routing. Messages that reached the broker before it are
	// handed to the hub first.
	Close(ctx context.Context) error
}

// localBroker routes within this process: the article's single node. It
// keeps the uids' history in memory.
type localBroker struct {
	hub  *Hub
	hist *memHistory
}

var _ Broker = localBroker{}

func (b localBroker) UserOnline(uid string) { b.hist.userOnline(uid) }

func (b localBroker) UserOffline(uid string) { b.hist.userOffline(uid) }

func (b localBroker) Online(_ context.Context, uids []string) (online, offline []string, err error) {
	for _, uid := range uids {
		if len(b.hub.clients(uid)) > 0 {
			online = append(online, uid)
		} else {
			offline = append(offline, uid)
		}
	}
	return online, offline, nil
}

func (b localBroker) Publish(_ context.Context, m *Message, uids []string) ([]string, error) {
	return b.hist.deliver(b.hub, m, uids), nil
}

func (b localBroker) Replay(_ context.Context, uid string, since position) ([]qitem, bool) {
	return b.hist.since(uid, since)
}

func (localBroker) Ready(context.Context) error { return nil }
func (localBroker) Close(context.Context) error { return nil }
