package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"go-pusher/internal/stream"
)

// This file is the publish half of the broker: the script that gives
// offsets, stores messages and publishes them, and the envelope a message
// travels in.

// publishScript gives a message its uid's next offset, stores it in the
// uid's history and publishes it, atomically, so that any node can serve
// a since= and offsets follow publish order. A uid nobody subscribes to
// gets nothing stored and 0 receivers (its /send is a 404).
//
// KEYS: the uid's state hash (epoch e, last offset n) and history stream.
// ARGV: channel, message ("id|nanos|message"), an epoch for a new state,
// history size, history TTL in ms, state TTL in ms.
const publishScript = `
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[1])
if tonumber(subs[2]) == 0 then return {0, '', 0} end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'o', n, 'd', ARGV[2])
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[5])
  if cutoff > 0 then redis.call('XTRIM', KEYS[2], 'MINID', cutoff) end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local rcv = redis.call('PUBLISH', ARGV[1], epoch .. ':' .. n .. '|' .. ARGV[2])
return {rcv, epoch, n}
`

// redisStateTTL is how long a uid's epoch and offset outlive its last
// message in Redis; after it the uid starts a new epoch.
const redisStateTTL = 24 * time.Hour

// Publish gives m the next offset of each of uids, stores it in their
// history and publishes it to every node that holds a connection of
// theirs: the publish script once per uid, pipelined.
// A uid whose channel nobody subscribes to is gone.
func (b *Broker) Publish(ctx context.Context, m *stream.Message, uids []string) (gone []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	tail := encodeEnvelope(m)
	epoch, err := stream.NewEpoch()
	if err != nil {
		return nil, err
	}
	stateTTL := max(redisStateTTL, b.cfg.HistoryTTL).Milliseconds()
	err = inBatches(uids, func(batch []string) error {
		cmds := make([]*redis.Cmd, len(batch))
		todo := make([]int, len(batch)) // indexes of batch still to run
		for i := range todo {
			todo[i] = i
		}
		for attempt := 0; ; attempt++ {
			pipe := b.rdb.Pipeline()
			for _, i := range todo {
				cmds[i] = b.publish.EvalSha(ctx, pipe, []string{b.stateKey(batch[i]), b.histKey(batch[i])},
					b.channel(batch[i]), tail, epoch, b.cfg.HistorySize, b.cfg.HistoryTTL.Milliseconds(), stateTTL)
			}
			_, err := pipe.Exec(ctx)
			if err == nil {
				break
			}
			// Only the commands Redis refused with NOSCRIPT (it restarted
			// and forgot the script) did not run; the others must not run
			// twice.
			var again []int
			for _, i := range todo {
				if e := cmds[i].Err(); e != nil {
					if !redis.HasErrorPrefix(e, "NOSCRIPT") || attempt > 0 {
						return e
					}
					again = append(again, i)
				}
			}
			if err := b.publish.Load(ctx, b.rdb).Err(); err != nil {
				return err
			}
			todo = again
		}
		b.published.Add(float64(len(batch)))
		for i, c := range cmds {
			res, err := c.Slice()
			if err != nil {
				return fmt.Errorf("publish script: %w", err)
			}
			if len(res) != 3 {
				return fmt.Errorf("publish script: %d results, want 3", len(res))
			}
			if rcv, _ := res[0].(int64); rcv == 0 {
				gone = append(gone, batch[i])
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis publish: %w", err)
	}
	return gone, nil
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
