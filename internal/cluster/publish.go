package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/idempotency"
	"go-pusher/internal/stream"
)

// This file is the publish half of the broker: the script that gives
// offsets, stores messages and publishes them, and the envelope a message
// travels in.

// publishScript gives a message its uid's next offset, stores it in the
// uid's history and publishes it, atomically, so that any node can serve
// a since= and offsets follow publish order. A uid nobody subscribes to
// gets nothing stored and 0 receivers (its /send is a 404), or -2 when
// some node is resubscribing and the uid may be connected there (nodes.go;
// a 503).
//
// With an idempotency key (KEYS[4]) the publish is the claim's: it runs
// only while the key still holds this request's claim (ARGV[9]), else it
// returns -1 and does nothing, so that two nodes never both send one key.
// For a unicast (ARGV[10], the key's finished value, not empty) the key
// is finished in the same step: the message and the remembered answer
// can not part, whatever happens to the node afterwards. A unicast nobody
// receives releases the key instead (a 404 is not remembered).
//
// KEYS: the uid's state hash (epoch e, last offset n), history stream,
// the nodes hash, and optionally the idempotency key.
// ARGV: channel, message ("id|nanos|message"), an epoch for a new state,
// history size, history TTL in ms, state TTL in ms, the prefix of node
// channels, the dead-after ms of nodes; with KEYS[4]: the claim's value,
// the finished value or ”, its TTL in ms.
const publishScript = unsureLua + `
local PUBLISH = 'PUBLISH'
if KEYS[4] and redis.call('GET', KEYS[4]) ~= ARGV[9] then return {-1, '', 0} end
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[1])
if tonumber(subs[2]) == 0 then
  if KEYS[4] and ARGV[10] ~= '' then redis.call('DEL', KEYS[4]) end
  if unsure(KEYS[3], ARGV[7], ARGV[8]) > 0 then return {-2, '', 0} end
  return {0, '', 0}
end
` + publishCore + `
if KEYS[4] and ARGV[10] ~= '' then redis.call('SET', KEYS[4], ARGV[10], 'PX', ARGV[11]) end
return {rcv, epoch, n}
`

// publishCore gives the message (ARGV[2]) the uid's next offset, keeps
// it in history and publishes it on ARGV[1]: the part of the publish
// that a single Redis and a Redis Cluster share. KEYS[1..2] and ARGV[1..6]
// are publishScript's. History is trimmed with MAXLEN ~ (whole stream
// nodes, so a stream may hold up to about a node more than the history
// size) and expires with its TTL; it is not trimmed by age on every
// publish: readSince never replays more than the history size nor
// anything older than the history TTL, whatever the stream holds. (An
// exact MAXLEN and an XTRIM MINID per publish cost Redis about 9% more
// CPU per publish.)
const publishCore = `
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'o', n, 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local rcv = redis.call(PUBLISH, ARGV[1], epoch .. ':' .. n .. '|' .. ARGV[2])
`

// publishClusterScript is publishScript on a Redis Cluster master: keys
// in the uid's slot only, sharded pub/sub, and for an idempotency key a
// guard in the uid's slot rather than the key itself (which lives in a
// slot of its own): the guard records, in the same step as the publish,
// that this key went to this uid, so that no second claim of the key
// (after the first lapsed with its node) sends it to the uid again; it
// returns -3 and the guard instead, a unicast's remembered answer.
//
// KEYS: the uid's state hash, history stream, and optionally the guard.
// ARGV: channel, message, epoch, history size, history TTL in ms, state
// TTL in ms, the prefix of node channels, the number k of node ids, the
// k node ids (nodes.go); with KEYS[3]: the claim's value, the finished
// value or ”, the guard's TTL in ms.
const publishClusterScript = unsureListLua + `
local PUBLISH = 'SPUBLISH'
local k = tonumber(ARGV[8])
local g = 9 + k
if KEYS[3] then
  local v = redis.call('GET', KEYS[3])
  if v then return {-3, v, 0} end
end
local subs = redis.call('PUBSUB', 'SHARDNUMSUB', ARGV[1])
if tonumber(subs[2]) == 0 then
  if unsureOf(ARGV[7], 9, 8 + k) > 0 then return {-2, '', 0} end
  return {0, '', 0}
end
` + publishCore + `
if KEYS[3] then
  local v = ARGV[g + 1]
  if v == '' then v = ARGV[g] end
  redis.call('SET', KEYS[3], v, 'PX', ARGV[g + 2])
end
return {rcv, epoch, n}
`

// redisStateTTL is how long a uid's epoch and offset outlive its last
// message in Redis; after it the uid starts a new epoch.
const redisStateTTL = 24 * time.Hour

// Publication is one message to publish to some uids, and what became of
// it.
type Publication struct {
	Message *stream.Message
	UIDs    []string
	// Claim, when set, is the idempotency claim the publish depends on
	// (see publishScript). Answer, when set (a unicast: one uid, and an
	// answer known before the publish), is remembered for the key along
	// with the publish.
	Claim  *idempotency.Claim
	Answer string

	// Gone lists the uids that turned out to have no connection
	// anywhere: nothing was stored for them.
	Gone []string
	// Unsure lists the uids that had no subscriber while some node was
	// resubscribing (they may be connected there): nothing was stored
	// for them either.
	Unsure []string
	// Refused: the claim was no longer this request's (it outlived
	// its claim TTL, and another request may hold the key): nothing was sent
	// to the uids not in Gone from the first refusal on.
	Refused bool
	// Finished: the key was finished with Answer along with the publish.
	Finished bool
	// Unsent: PublishAll failed before any of its calls went to Redis,
	// so it surely reached nobody.
	Unsent bool
	// Replay, on a Redis Cluster, is the answer remembered for Claim's
	// key when an earlier claim of it (lapsed with its node) had sent
	// the unicast already: nothing was sent again.
	Replay string
}

// Publish gives m the next offset of each of uids, stores it in their
// history and publishes it to every node that holds a connection of
// theirs. It returns the uids that turned out to have no connection
// anywhere.
func (b *Broker) Publish(ctx context.Context, m *stream.Message, uids []string) (gone []string, err error) {
	p := &Publication{Message: m, UIDs: uids}
	err = b.PublishAll(ctx, []*Publication{p})
	return p.Gone, err
}

// publishCall is one run of the publish script: a uid of a publication.
type publishCall struct {
	p   *Publication
	uid string
	cmd *redis.Cmd
}

// PublishAll publishes each of pubs to its uids, in order: the publish
// script once per uid, pipelined, so that a batch costs each Redis master
// one round trip (per redisBatch uids). An error means some may have been
// published and others not; those surely not are marked Unsent.
func (b *Broker) PublishAll(ctx context.Context, pubs []*Publication) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	epoch, err := stream.NewEpoch()
	if err != nil {
		return err
	}
	rt := b.routes.Load()
	var order []*shard
	calls := map[*shard][]publishCall{}
	for _, p := range pubs {
		p.Gone, p.Unsure, p.Refused, p.Finished, p.Unsent, p.Replay = nil, nil, false, false, false, ""
		for _, uid := range p.UIDs {
			s := rt.forKey(b.channel(uid))
			if _, ok := calls[s]; !ok {
				order = append(order, s)
			}
			calls[s] = append(calls[s], publishCall{p: p, uid: uid})
		}
	}
	envelopes := make(map[*Publication]string, len(pubs))
	for _, p := range pubs {
		envelopes[p] = encodeEnvelope(p.Message)
	}
	tried := make(map[*Publication]bool, len(pubs))
	fail := func(err error) error {
		for _, p := range pubs {
			p.Unsent = !tried[p]
		}
		b.failed(err)
		return fmt.Errorf("redis publish: %w", err)
	}
	for _, s := range order {
		if s.rdb == nil {
			// Before anything is sent: a batch goes out whole or not at all
			// for want of a master.
			return fail(errNoMaster)
		}
	}
	for _, s := range order {
		cs := calls[s]
		for len(cs) > 0 {
			n := min(len(cs), redisBatch)
			for _, c := range cs[:n] {
				tried[c.p] = true
			}
			if err := b.runPublish(ctx, s, cs[:n], envelopes, epoch); err != nil {
				return fail(err)
			}
			cs = cs[n:]
		}
	}
	return nil
}

// errNotReplicated: a publish reached its master but no replica within
// the wait, so a failover could lose it.
var errNotReplicated = errors.New("no replica acknowledged the write in time")

// runPublish runs calls, all on shard s, in one pipeline and reads their
// results into their publications. When s has replicas, the pipeline
// ends with WAIT 1: the calls count as done only once a replica has them.
func (b *Broker) runPublish(ctx context.Context, s *shard, calls []publishCall, envelopes map[*Publication]string, epoch string) error {
	replicas := s.replicas.Load()
	var nodes []any
	if b.clustered {
		nodes = b.nodeArgs()
	}
	todo := make([]int, len(calls)) // indexes of calls still to run
	for i := range todo {
		todo[i] = i
	}
	for attempt := 0; ; attempt++ {
		var pipe redis.Scripter = s.ap
		if len(todo) > 1 || replicas > 0 {
			// Several calls (a batch): a pipeline of their own. WAIT
			// covers its connection's writes: the calls and the WAIT
			// must share one. One call (a /send) goes through automatic
			// pipelining, which shares its round trip with those of
			// concurrent /sends.
			pipe = s.rdb.Pipeline()
		}
		for _, i := range todo {
			c := &calls[i]
			keys, args := b.publishArgs(c, envelopes[c.p], epoch, nodes)
			c.cmd = b.publish.EvalSha(ctx, pipe, keys, args...)
		}
		var wait *redis.Cmd
		err := calls[todo[0]].cmd.Err()
		if p, ok := pipe.(redis.Pipeliner); ok {
			if replicas > 0 {
				wait = p.Do(ctx, "WAIT", 1, waitTimeout(ctx).Milliseconds())
			}
			_, err = p.Exec(ctx)
		}
		if wait != nil {
			// WAIT covers the writes of its connection, the pipeline's:
			// those that ran must be on a replica, whatever else failed.
			n, werr := wait.Int64()
			switch {
			case werr != nil:
				return fmt.Errorf("WAIT: %w", werr)
			case n < 1:
				return errNotReplicated
			}
		}
		if err == nil {
			break
		}
		again, nerr := noScript(calls, todo, attempt)
		switch {
		case nerr != nil:
			return nerr
		case len(again) == 0:
			return err
		}
		if err := b.publish.Load(ctx, s.rdb).Err(); err != nil {
			return err
		}
		todo = again
	}
	b.published.Add(float64(len(calls)))
	for _, c := range calls {
		res, err := c.cmd.Slice()
		if err != nil {
			return fmt.Errorf("publish script: %w", err)
		}
		if len(res) != 3 {
			return fmt.Errorf("publish script: %d results, want 3", len(res))
		}
		switch rcv, _ := res[0].(int64); {
		case rcv == -3:
			guard, _ := res[1].(string)
			guarded(c, guard)
		case rcv == -2:
			c.p.Unsure = append(c.p.Unsure, c.uid)
		case rcv < 0:
			c.p.Refused = true
		case rcv == 0:
			c.p.Gone = append(c.p.Gone, c.uid)
		case c.p.Claim != nil && c.p.Answer != "" && !b.clustered:
			// On a Redis Cluster the guard has the answer, the key not yet.
			c.p.Finished = true
		}
	}
	return nil
}

// publishArgs are the keys and arguments of c's publish script.
func (b *Broker) publishArgs(c *publishCall, envelope, epoch string, nodes []any) ([]string, []any) {
	tag := b.tag(c.uid)
	keys := make([]string, 2, 4)
	keys[0], keys[1] = b.prefix+"s:"+tag, b.prefix+"h:"+tag
	args := make([]any, 0, 11+len(nodes))
	args = append(args, b.prefix+"u:"+tag, envelope, epoch, b.consts.historySize, b.consts.historyTTL, b.consts.stateTTL)
	ttl := b.cfg.IdempotencyTTL
	if b.clustered {
		args = append(args, nodes...)
		ttl = max(ttl, b.claimTTL()+time.Second) // the guard outlives a lapsed claim
	} else {
		keys = append(keys, b.consts.nodesKey)
		args = append(args, b.consts.nodePrefix, b.consts.deadAfter)
	}
	if cl := c.p.Claim; cl != nil {
		if b.clustered {
			keys = append(keys, b.guardKey(c.uid, cl.Key))
		} else {
			keys = append(keys, b.idemKey(cl.Key))
		}
		done := ""
		if c.p.Answer != "" {
			done = finishedValue(cl.Fingerprint, c.p.Answer)
		}
		args = append(args, claimValue(*cl), done, ttl.Milliseconds())
	}
	return keys, args
}

// guarded reads the guard a call found on a Redis Cluster: the key went
// to c.uid already, under an earlier claim. A unicast gets the answer
// remembered then; a multicast counts the uid as sent; a guard of a
// different request refuses the publication.
func guarded(c publishCall, guard string) {
	kind, rest, _ := strings.Cut(guard, "|")
	var fp, answer string
	switch kind {
	case "d":
		fp, answer, _ = strings.Cut(rest, "|")
	case "p":
		_, fp, _ = strings.Cut(rest, "|")
	}
	switch {
	case c.p.Claim == nil || fp != c.p.Claim.Fingerprint:
		c.p.Refused = true
	case answer != "":
		c.p.Replay = answer
	}
}

// waitTimeout is how long a WAIT may take: half of what is left of ctx,
// at most a second (0 would be forever).
func waitTimeout(ctx context.Context) time.Duration {
	d := time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)/2)
	}
	return max(d, time.Millisecond)
}

// noScript returns the calls of todo that Redis refused with NOSCRIPT (it
// restarted and forgot the script), to run again once the script is
// loaded; the others ran and must not run twice. It fails when that is
// not safe: on a second attempt, on any other error, or when a refused
// call has a later call to the same uid that ran (running it again would
// put its message after that one).
func noScript(calls []publishCall, todo []int, attempt int) ([]int, error) {
	var again []int
	refused := make(map[string]bool)
	for _, i := range todo {
		e := calls[i].cmd.Err()
		switch {
		case e == nil:
			if refused[calls[i].uid] {
				return nil, fmt.Errorf("redis forgot the publish script in the middle of the messages to %q", calls[i].uid)
			}
		case !redis.HasErrorPrefix(e, "NOSCRIPT") || attempt > 0:
			return nil, e
		default:
			refused[calls[i].uid] = true
			again = append(again, i)
		}
	}
	return again, nil
}

// The envelope of a message in Redis: message id, accept time in Unix
// nanoseconds and the message, separated by '|' (the first two never
// contain one).
func encodeEnvelope(m *stream.Message) string {
	var sb strings.Builder
	sb.Grow(len(m.ID) + 22 + len(m.Data))
	sb.WriteString(m.ID)
	sb.WriteByte('|')
	sb.WriteString(strconv.FormatInt(m.Accepted.UnixNano(), 10))
	sb.WriteByte('|')
	sb.Write(m.Data)
	return sb.String()
}

func decodeEnvelope(s string) (*stream.Message, error) {
	id, rest, ok1 := strings.Cut(s, "|")
	ts, body, ok2 := strings.Cut(rest, "|")
	if !ok1 || !ok2 {
		return nil, errors.New("want id|time|message")
	}
	nanos, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("time %q: %w", ts, err)
	}
	return stream.NewMessageString(id, body, time.Unix(0, nanos)), nil
}
