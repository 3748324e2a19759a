package testutil

import (
	"os/exec"
	"sync"
	"testing"
)

// RedisBackend is a Redis that cluster mode runs on: the single Redis of
// PUSHER_TEST_REDIS_URL, or a Redis Cluster.
type RedisBackend struct {
	Name string // "redis" or "cluster": the subtest's name
	URL  string // PUSHER_REDIS_URL
}

// SharedRedisCluster is the Redis Cluster that the tests of one package
// share: started on first use, stopped by the package's TestMain through
// Stop. Tests that kill a node start a cluster of their own
// (StartRedisCluster).
type SharedRedisCluster struct {
	once    sync.Once
	cluster *RedisCluster
	stop    func()
	err     error
}

// Get starts the cluster on first use, or fails (under CI=true) or skips
// the test when it cannot.
func (s *SharedRedisCluster) Get(tb testing.TB) *RedisCluster {
	tb.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			SkipOrFail(tb, "Redis Cluster needs %s on PATH: %v", bin, err)
		}
	}
	s.once.Do(func() { s.cluster, s.stop, s.err = StartRedisClusterMain() })
	if s.err != nil {
		tb.Fatal(s.err)
	}
	return s.cluster
}

// Stop kills the cluster, if it was started.
func (s *SharedRedisCluster) Stop() {
	if s.stop != nil {
		s.stop()
	}
}

// Backends are the Redis backends a cluster-mode test runs on: the single
// Redis, then the shared Redis Cluster.
func (s *SharedRedisCluster) Backends(tb testing.TB) []RedisBackend {
	tb.Helper()
	return []RedisBackend{
		{Name: "redis", URL: Redis(tb).String()},
		{Name: "cluster", URL: s.Get(tb).URL()},
	}
}

// OnEveryRedis runs f as a subtest on each of s's backends.
func (s *SharedRedisCluster) OnEveryRedis(t *testing.T, f func(t *testing.T, be RedisBackend)) {
	t.Helper()
	for _, be := range s.Backends(t) {
		t.Run(be.Name, func(t *testing.T) { f(t, be) })
	}
}
