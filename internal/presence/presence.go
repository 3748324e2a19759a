// Package presence turns a node's "first connection of a uid" and "last
// connection of a uid gone" into online and offline events, with the
// offline one held back for a delay, so that a page reload or a network
// change (gone and back within the delay) sends nothing. Per uid, events
// alternate (online, offline, online...) and are emitted in order.
package presence

import (
	"sync"
	"time"
)

// Tracker keeps the uids whose online event went out.
//
// Timers: one per uid whose last connection left, pending for the delay;
// Close stops them.
type Tracker struct {
	delay time.Duration
	emit  func(event, uid string, at time.Time)
	now   func() time.Time

	mu     sync.Mutex
	uids   map[string]*entry // uids that are online, as last emitted
	closed bool
}

// entry is an online uid; timer is set while its offline is held back.
type entry struct {
	timer *time.Timer
	gen   int       // which Offline the pending timer belongs to
	left  time.Time // when the last connection left: the offline's time
}

// New makes a Tracker that calls emit for each event ("online" or
// "offline"), under its lock, in order: emit must not block.
func New(delay time.Duration, emit func(event, uid string, at time.Time), now func() time.Time) *Tracker {
	return &Tracker{delay: delay, emit: emit, now: now, uids: map[string]*entry{}}
}

// Online records that uid has a connection again (here, its first).
func (t *Tracker) Online(uid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if e, ok := t.uids[uid]; ok {
		// Back within the delay: its offline never goes out.
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
			e.gen++
		}
		return
	}
	t.uids[uid] = &entry{}
	t.emit("online", uid, t.now())
}

// Offline records that uid's last connection left. Its offline goes out
// after the delay unless it comes back, with the time it left.
func (t *Tracker) Offline(uid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.uids[uid]
	if t.closed || !ok || e.timer != nil {
		return
	}
	e.gen++
	gen := e.gen
	e.left = t.now()
	e.timer = time.AfterFunc(t.delay, func() { t.fire(uid, e, gen) })
}

func (t *Tracker) fire(uid string, e *entry, gen int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.uids[uid] != e || e.gen != gen {
		return // it came back meanwhile
	}
	delete(t.uids, uid)
	t.emit("offline", uid, e.left)
}

// Close stops the pending timers; no event is emitted after it.
func (t *Tracker) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, e := range t.uids {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
}
