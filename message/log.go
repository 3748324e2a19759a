// Package message holds the message loggers of go-pusher: what /send
// accepted is recorded here before it is pushed, and what happened to it
// afterwards (delivered, failed) is recorded as a status update.
package message

import (
	"context"
	"time"
)

// Status is what became of a message for one uid.
type Status uint8

// The statuses, as stored in db_logs.status.
const (
	StatusQueued    Status = 0 // accepted and queued on the uid's connections
	StatusDelivered Status = 1 // written to at least one socket of the uid
	StatusFailed    Status = 2 // not written to any socket of the uid
)

// String returns the status name used in logs.
func (s Status) String() string {
	switch s {
	case StatusQueued:
		return "queued"
	case StatusDelivered:
		return "delivered"
	case StatusFailed:
		return "failed"
	}
	return "unknown"
}

// Log is one accepted message: the article's message.Log, with the id that
// /send assigned and every uid the message is pushed to. A unicast has one
// uid; a multicast has the uids that were online. It stays one value for
// all its uids so that a logger decides itself whether it writes one line
// or one row per uid.
type Log struct {
	ID      string
	UIDs    []string
	Message string
	Time    time.Time
}

// Logger records messages before they are pushed, and their delivery
// status afterwards.
//
// Log is on the /send path: it returns once the messages are recorded (for
// a batching logger, once the batch holding them is committed), or with
// an error when they could not be, in which case none is pushed. The
// messages of one call are recorded together or not at all (a
// /send/batch).
// Concurrent calls are expected and may share one write. A logger that can
// wait on something remote bounds each call itself (the server configures
// it with -message-log-timeout) as well as by ctx, so that /send need not
// arm a timer for every message.
//
// Update is on the delivery path and must not block: a logger that writes
// somewhere slow queues it. A uid with several connections may report
// StatusDelivered more than once, and StatusFailed after StatusDelivered;
// delivered wins.
type Logger interface {
	Log(ctx context.Context, ms ...Log) error
	Update(id, uid string, s Status)
	// Ready reports why the logger cannot record messages now, or nil.
	Ready(ctx context.Context) error
	// Close flushes what is queued and releases the logger. It returns when
	// done or when ctx ends, whichever comes first.
	Close(ctx context.Context) error
}
