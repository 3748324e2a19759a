package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// redisClusterWait bounds each wait on the cluster: a node's start, the
// cluster's forming, a WaitHealthy.
const redisClusterWait = 20 * time.Second

// RedisCluster is a Redis Cluster of three masters and three replicas on
// loopback, each node a redis-server process of the test's own, so that a
// test can kill a master and watch its replica take over.
type RedisCluster struct {
	mu    sync.Mutex   // guards each node's cmd and done
	nodes []*redisNode // in start order: the first three began as masters
}

// redisNode is one redis-server and what restarting it needs.
type redisNode struct {
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
}

// StartRedisCluster starts a cluster that lives until the test ends.
// Without redis-server or redis-cli on PATH the test is skipped, or fails
// under CI=true.
func StartRedisCluster(tb testing.TB) *RedisCluster {
	tb.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			SkipOrFail(tb, "Redis Cluster needs %s on PATH: %v", bin, err)
		}
	}
	c, stop, err := StartRedisClusterMain()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return c
}

// StartRedisClusterMain starts a cluster for a TestMain, which has no
// testing.TB: stop kills every node and removes their directories.
func StartRedisClusterMain() (c *RedisCluster, stop func(), err error) {
	root, err := os.MkdirTemp("", "go-pusher-rediscluster-")
	if err != nil {
		return nil, nil, err
	}
	c = &RedisCluster{}
	stop = sync.OnceFunc(func() {
		for _, n := range c.nodes {
			_ = c.kill(n) // a node that outlives SIGKILL is beyond help here
		}
		_ = os.RemoveAll(root) // a temporary directory left behind harms nothing
	})
	if err := c.start(root); err != nil {
		stop()
		return nil, nil, fmt.Errorf("start Redis Cluster: %w", err)
	}
	return c, stop, nil
}

// start launches the six nodes in root, joins them and waits until the
// cluster is healthy.
func (c *RedisCluster) start(root string) error {
	args := []string{"--cluster", "create"}
	for i := range 6 {
		n, err := c.launchNew(filepath.Join(root, strconv.Itoa(i)))
		if err != nil {
			return err
		}
		c.nodes = append(c.nodes, n)
		args = append(args, n.addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), redisClusterWait)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := poll(c.health); err != nil {
		return fmt.Errorf("not healthy after %v: %w", redisClusterWait, err)
	}
	return nil
}

// URL is the cluster's URL for PUSHER_REDIS_URL, with the first three
// nodes as seeds.
func (c *RedisCluster) URL() string {
	return "redis+cluster://" + c.nodes[0].addr + "?addr=" + c.nodes[1].addr + "&addr=" + c.nodes[2].addr
}

// Addrs are the host:port of all six nodes, in start order.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr
	}
	return addrs
}

// MasterOf is the address of the live node that serves key's slot as its
// master, or "" while no single live node claims the slot (during a
// failover, or while a restarted old master has not yet heard that it
// was replaced), so that a test can poll it.
func (c *RedisCluster) MasterOf(tb testing.TB, key string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	slot, owners := int64(-1), []string{}
	for _, n := range c.live() {
		rdb := nodeClient(n.addr)
		if slot < 0 { // not yet known: this node may be the first to answer
			if s, err := rdb.ClusterKeySlot(ctx, key).Result(); err == nil {
				slot = s
			}
		}
		if claims(ctx, rdb, n.addr, slot) {
			owners = append(owners, n.addr)
		}
		rdb.Close()
	}
	if len(owners) != 1 {
		return ""
	}
	return owners[0]
}

// claims reports whether the node at addr says that it is slot's master.
func claims(ctx context.Context, rdb *redis.Client, addr string, slot int64) bool {
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return false
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if r.Start > slot || slot > r.End {
				continue
			}
			for _, n := range sh.Nodes {
				if n.Role == "master" && n.Health == "online" {
					return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10)) == addr
				}
			}
			return false
		}
	}
	return false
}

// Kill ends the node at addr with SIGKILL, as a crash would.
func (c *RedisCluster) Kill(tb testing.TB, addr string) {
	tb.Helper()
	if err := c.kill(c.node(tb, addr)); err != nil {
		tb.Fatalf("kill redis-server %s: %v", addr, err)
	}
}

// Restart starts a killed node again with its directory, port and
// arguments: its nodes.conf makes it rejoin the cluster (as a replica if
// its replica took over meanwhile).
func (c *RedisCluster) Restart(tb testing.TB, addr string) {
	tb.Helper()
	if err := c.launch(c.node(tb, addr)); err != nil {
		tb.Fatalf("restart redis-server %s: %v", addr, err)
	}
}

// WaitHealthy waits until every live node says cluster_state:ok and every
// master has an in-sync replica, which needs all six nodes up.
func (c *RedisCluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	if err := poll(c.health); err != nil {
		tb.Fatalf("Redis Cluster not healthy after %v: %v", redisClusterWait, err)
	}
}

// health is nil when the cluster is healthy, or says what is not.
func (c *RedisCluster) health() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range c.live() {
		rdb := nodeClient(n.addr)
		info, err := rdb.ClusterInfo(ctx).Result()
		repl, err2 := rdb.Info(ctx, "replication").Result()
		rdb.Close()
		switch {
		case errors.Join(err, err2) != nil:
			return fmt.Errorf("%s: %w", n.addr, errors.Join(err, err2))
		case !strings.Contains(info, "cluster_state:ok"):
			return fmt.Errorf("%s: cluster_state is not ok", n.addr)
		case strings.Contains(repl, "role:master") && !strings.Contains(repl, "state=online"):
			return fmt.Errorf("%s: a master without an in-sync replica", n.addr)
		}
	}
	return nil
}

// live are the nodes whose process runs.
func (c *RedisCluster) live() []*redisNode {
	var live []*redisNode
	for _, n := range c.nodes {
		if c.running(n) {
			live = append(live, n)
		}
	}
	return live
}

// running reports whether n's process was started and has not exited.
func (c *RedisCluster) running(n *redisNode) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-n.done: // a nil done, before the first start, never is ready
	default:
		return n.cmd != nil
	}
	return false
}

// node is the node at addr, failing the test for an unknown address.
func (c *RedisCluster) node(tb testing.TB, addr string) *redisNode {
	tb.Helper()
	for _, n := range c.nodes {
		if n.addr == addr {
			return n
		}
	}
	tb.Fatalf("%s is no node of the Redis Cluster %v", addr, c.Addrs())
	return nil
}

// launchNew starts a node in a new dir on a free port, with another port
// when someone else took the one chosen before redis-server could.
func (c *RedisCluster) launchNew(dir string) (*redisNode, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	var err error
	for range 5 {
		var port int
		if port, err = freeRedisPort(); err != nil {
			return nil, err
		}
		n := &redisNode{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir}
		if err = c.launch(n); err == nil {
			return n, nil
		}
	}
	return nil, err
}

// freeRedisPort is a loopback port free now, as is its cluster bus port
// (port+10000).
func freeRedisPort() (int, error) {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		ln.Close()
		if err == nil {
			bus.Close()
			if port < 55535 {
				return port, nil
			}
		}
	}
	return 0, errors.New("no free loopback port with a free cluster bus port")
}

// launch starts n's redis-server, unless it runs, and waits until it
// answers PING.
func (c *RedisCluster) launch(n *redisNode) error {
	if c.running(n) {
		return errors.New("it is running")
	}
	_, port, _ := net.SplitHostPort(n.addr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
		"--daemonize", "no", "--logfile", "redis.log", "--save", "", "--appendonly", "no",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
		"--repl-diskless-sync-delay", "0") // not 5 s before a replica's first sync
	cmd.Dir = n.dir
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // killed on purpose, or seen through done
		close(done)
	}()
	c.mu.Lock()
	n.cmd, n.done = cmd, done
	c.mu.Unlock()
	rdb := nodeClient(n.addr)
	defer rdb.Close()
	err := poll(func() error { // nil too once it exited, not to wait on
		if !c.running(n) {
			return nil
		}
		return rdb.Ping(context.Background()).Err()
	})
	if !c.running(n) {
		log, _ := os.ReadFile(filepath.Join(n.dir, "redis.log"))
		return fmt.Errorf("redis-server %s exited:\n%s", n.addr, log)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("redis-server %s does not answer: %w", n.addr, err), c.kill(n))
	}
	return nil
}

// kill sends SIGKILL to n's process and waits until it is reaped.
func (c *RedisCluster) kill(n *redisNode) error {
	c.mu.Lock()
	cmd, done := n.cmd, n.done // set: kill follows a launch
	c.mu.Unlock()
	_ = cmd.Process.Kill() // fails only once it has exited
	select {
	case <-done:
		return nil
	case <-time.After(redisClusterWait):
		return errors.New("still running after SIGKILL")
	}
}

// nodeClient talks to one node, without cluster redirections.
func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: addr, DialTimeout: time.Second,
		ReadTimeout: time.Second, MaxRetries: -1, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// poll calls check until it returns nil, or returns its last error after
// redisClusterWait.
func poll(check func() error) error {
	deadline := time.Now().Add(redisClusterWait)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
