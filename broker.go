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
	// Publish queues m on every connection of each of uids, on every node.
	// It returns the uids that turned out to have no connection anywhere
	// (they went away after Online). An error means m may not have reached
	// some connections.
	Publish(ctx context.Context, m *Message, uids []string) (gone []string, err error)
	// Ready reports why the broker cannot route messages now, or nil.
	Ready(ctx context.Context) error
	// Close stops routing. Messages that reached the broker before it are
	// handed to the hub first.
	Close(ctx context.Context) error
}

// localBroker routes within this process: the article's single node.
type localBroker struct {
	hub *Hub
}

var _ Broker = localBroker{}

func (localBroker) UserOnline(string)  {}
func (localBroker) UserOffline(string) {}

func (b localBroker) Online(_ context.Context, uids []string) (online, offline []string, err error) {
	return splitLocal(b.hub, uids)
}

// splitLocal splits uids by whether they have a connection on this node.
func splitLocal(h *Hub, uids []string) (online, offline []string, err error) {
	for _, uid := range uids {
		if len(h.clients(uid)) > 0 {
			online = append(online, uid)
		} else {
			offline = append(offline, uid)
		}
	}
	return online, offline, nil
}

func (b localBroker) Publish(_ context.Context, m *Message, uids []string) ([]string, error) {
	return deliverLocal(b.hub, m, uids), nil
}

// deliverLocal queues m on the local connections of uids and returns the
// uids that have none. A uid whose connections are all closing (a slow
// consumer, say) is not gone: the message was accepted for it and counts
// as failed there.
func deliverLocal(h *Hub, m *Message, uids []string) (gone []string) {
	for _, uid := range uids {
		cs := h.clients(uid)
		if len(cs) == 0 {
			gone = append(gone, uid)
			continue
		}
		h.deliver(uid, cs, m)
	}
	return gone
}

func (localBroker) Ready(context.Context) error { return nil }
func (localBroker) Close(context.Context) error { return nil }
