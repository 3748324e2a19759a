package history

import (
	"time"

	"go-pusher/internal/stream"
)

// Publish gives m the next offset of each uid that has an open
// connection, stores it, and hands it to the uid's connections, all under
// the lock. It returns the uids that had no open connection: nothing was
// stored for them.
func (h *Memory) Publish(m *stream.Message, uids []string) (gone []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, uid := range uids {
		if !h.conns.Open(uid) {
			gone = append(gone, uid)
			continue
		}
		it, err := h.appendLocked(uid, m)
		if err != nil {
			// Only crypto/rand can fail here; the message goes out without
			// an offset rather than not at all.
			h.log.Error("history append failed", "uid", uid, "err", err)
		}
		h.conns.Deliver(uid, it)
	}
	h.evictLocked()
	return gone
}

func (h *Memory) appendLocked(uid string, m *stream.Message) (stream.Item, error) {
	u := h.users[uid]
	if u == nil {
		epoch, err := stream.NewEpoch()
		if err != nil {
			return stream.Item{M: m}, err
		}
		u = &uidLog{uid: uid, epoch: epoch}
		h.users[uid] = u
	}
	u.last++
	it := stream.Item{M: m, Off: u.last, Epoch: u.epoch}
	if h.lim.Size == 0 {
		return it, nil
	}
	if u.n == h.lim.Size {
		h.removeLocked(u.at(0), "count")
	}
	e := h.free
	if e != nil {
		h.free, h.nfree = e.next, h.nfree-1
	} else {
		e = new(entry)
	}
	*e = entry{uid: uid, off: u.last, m: m, size: int64(len(m.Data)+len(m.ID)) + entryOverhead, prev: h.newest}
	if h.newest != nil {
		h.newest.next = e
	} else {
		h.oldest = e
	}
	h.newest = e
	u.push(e, h.lim.Size)
	h.bytes += e.size
	h.count++
	return it, nil
}

// removeLocked drops e, which is the oldest entry of its uid.
func (h *Memory) removeLocked(e *entry, reason string) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		h.oldest = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		h.newest = e.prev
	}
	if u := h.users[e.uid]; u != nil && u.n > 0 && u.at(0) == e {
		u.dropOldest()
		if u.n == 0 && reason != "count" {
			// Emptied by age or the byte budget: an idle uid holds no
			// array. (Not for "count": the append that follows refills it.)
			u.ring, u.head = nil, 0
		}
	}
	h.bytes -= e.size
	h.count--
	*e = entry{} // let the message go
	if h.nfree < maxFreeEntries {
		e.next, h.free = h.free, e
		h.nfree++
	}
	switch reason {
	case "count":
		h.byCount.Inc()
	case "age":
		h.byAge.Inc()
	default:
		h.byBytes.Inc()
	}
}

// evictLocked drops the oldest entries while over the byte budget or
// past their age, then idle states while still over the budget or idle
// for IdleStateTTL. The oldest entry of all is the oldest of its uid.
func (h *Memory) evictLocked() {
	now := h.now()
	cutoff := now.Add(-h.lim.TTL)
entries:
	for e := h.oldest; e != nil; e = h.oldest {
		switch {
		case h.bytes > h.lim.MaxBytes:
			h.removeLocked(e, "bytes")
		case e.m.Accepted.Before(cutoff):
			h.removeLocked(e, "age")
		default:
			break entries // on to the idle states
		}
	}
	stateCutoff := now.Add(-max(IdleStateTTL, h.lim.TTL))
	for u := h.idleOldest; u != nil; u = h.idleOldest {
		if h.bytes <= h.lim.MaxBytes && h.idleBytes <= h.lim.MaxBytes/4 && !u.idleSince.Before(stateCutoff) {
			return
		}
		h.unidleLocked(u)
		for u.n > 0 {
			h.removeLocked(u.at(0), "bytes")
		}
		delete(h.users, u.uid)
	}
}

// UserOnline takes uid off the idle list: it has a connection again.
func (h *Memory) UserOnline(uid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if u := h.users[uid]; u != nil && u.inIdle {
		h.unidleLocked(u)
	}
}

// UserOffline puts uid on the idle list: it lost its last connection.
func (h *Memory) UserOffline(uid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.users[uid]
	if u == nil || u.inIdle {
		return
	}
	u.inIdle, u.idleSince = true, h.now()
	u.idlePrev = h.idleNewest
	if h.idleNewest != nil {
		h.idleNewest.idleNext = u
	} else {
		h.idleOldest = u
	}
	h.idleNewest = u
	h.bytes += stateOverhead + int64(len(u.uid))
	h.idleBytes += stateOverhead + int64(len(u.uid))
	h.evictLocked()
}

func (h *Memory) unidleLocked(u *uidLog) {
	if u.idlePrev != nil {
		u.idlePrev.idleNext = u.idleNext
	} else {
		h.idleOldest = u.idleNext
	}
	if u.idleNext != nil {
		u.idleNext.idlePrev = u.idlePrev
	} else {
		h.idleNewest = u.idlePrev
	}
	u.idlePrev, u.idleNext, u.inIdle = nil, nil, false
	h.bytes -= stateOverhead + int64(len(u.uid))
	h.idleBytes -= stateOverhead + int64(len(u.uid))
}

// Since returns what a connection of uid that saw everything up to p has
// missed, and whether history has all of it. A connection that calls it
// is registered already, so anything newer reaches it live.
func (h *Memory) Since(uid string, p stream.Position) ([]stream.Item, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evictLocked()
	u := h.users[uid]
	ok := h.lim.Size > 0 && u != nil && u.epoch == p.Epoch && p.N <= u.last
	var items []stream.Item
	if ok && p.N < u.last {
		// Everything after p.N must still be there: the first kept entry
		// is p.N+1 or older.
		if u.n == 0 || u.at(0).off > p.N+1 {
			ok = false
		} else {
			for i := range u.n {
				if e := u.at(i); e.off > p.N {
					items = append(items, stream.Item{M: e.m, Off: e.off, Epoch: u.epoch, Replay: true})
				}
			}
		}
	}
	if !ok {
		items = nil
	}
	return items, ok
}

// SweepInterval is how often the sweeper expires old messages for a
// history of ttl: often enough that nothing outlives its age by much.
func SweepInterval(ttl time.Duration) time.Duration {
	return min(time.Second, max(ttl/4, 10*time.Millisecond))
}

// Start runs the sweeper, which expires old messages and idle states
// every SweepInterval, until Close.
func (h *Memory) Start() {
	h.done = make(chan struct{})
	go func() {
		defer close(h.done)
		t := time.NewTicker(SweepInterval(h.lim.TTL))
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
				h.sweep()
			}
		}
	}()
}

func (h *Memory) sweep() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evictLocked()
}

// Close stops the sweeper started by Start, if any, and waits for it.
// The owner calls Start and Close from one goroutine.
func (h *Memory) Close() {
	h.once.Do(func() {
		close(h.stop)
		if h.done != nil {
			<-h.done
		}
	})
}
