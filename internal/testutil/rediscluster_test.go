package testutil

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// TestRedisClusterFailover kills the master of a key and checks that its
// replica takes over with the key, and that the old master rejoins.
func TestRedisClusterFailover(t *testing.T) {
	began := time.Now()
	c := StartRedisCluster(t)
	t.Logf("Redis Cluster up in %v at %s", time.Since(began).Round(time.Millisecond), c.URL())
	if len(c.Addrs()) != 6 || !strings.HasPrefix(c.URL(), "redis+cluster://"+c.Addrs()[0]+"?addr=") {
		t.Fatalf("Addrs %v, URL %s", c.Addrs(), c.URL())
	}
	ctx := context.Background()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: c.Addrs(),
		// go-redis reloads the slot map on MOVED, not when a master stops
		// answering: without a short interval it dials the dead master
		// for a minute (the default interval).
		ClusterStateReloadInterval: 200 * time.Millisecond,
		DisableIdentity:            true,
		MaintNotificationsConfig:   &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	defer rdb.Close()
	key := Prefix(t) + ":failover"
	master := c.MasterOf(t, key)
	replica := replicaOf(t, master)
	writeAndWait(t, rdb, key)

	c.Kill(t, master)
	WaitFor(t, "the replica to take over", func() bool { return c.MasterOf(t, key) == replica })
	WaitFor(t, "the key to be readable", func() bool { return rdb.Get(ctx, key).Val() == "v" })

	c.Restart(t, master)
	c.WaitHealthy(t)
	old := nodeClient(master)
	defer old.Close()
	if role := old.Do(ctx, "ROLE").String(); !strings.Contains(role, "slave") {
		t.Errorf("the restarted old master: %s, want a replica", role)
	}
	if got := c.MasterOf(t, key); got != replica {
		t.Errorf("MasterOf after the restart = %q, want %s", got, replica)
	}
}

// replicaOf is the address of master's replica, from its INFO.
func replicaOf(t *testing.T, master string) string {
	t.Helper()
	m := nodeClient(master)
	defer m.Close()
	info, err := m.Info(context.Background(), "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	sub := regexp.MustCompile(`slave0:ip=([^,]+),port=(\d+)`).FindStringSubmatch(info)
	if sub == nil {
		t.Fatalf("%s has no replica:\n%s", master, info)
	}
	return sub[1] + ":" + sub[2]
}

// writeAndWait sets key through rdb on one connection to its master, and
// waits on that connection until the replica has the write.
func writeAndWait(t *testing.T, rdb *redis.ClusterClient, key string) {
	t.Helper()
	ctx := context.Background()
	m, err := rdb.MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	conn := m.Conn() // WAIT counts the writes of its own connection
	defer conn.Close()
	if err := conn.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d replicas, %v", n, err)
	}
}
