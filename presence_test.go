package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"go-pusher/internal/testutil"
)

// TestOnline: POST /online splits uids into those with an open
// connection and the others, in the order given; bad input is a 4xx.
func TestOnline(t *testing.T) {
	ts := startServer(t, testConfig(t, "-max-multicast", "3"))
	ts.dial("a")
	ts.dial("c")
	code, _, body := ts.post("/online", "application/json", `{"uids":["c","b","a","b"]}`, nil)
	if code != http.StatusOK || body != `{"online":["c","a"],"offline":["b"]}`+"\n" {
		t.Errorf("/online = %d %q", code, body)
	}
	for _, tt := range []struct {
		contentType, body string
		code              int
		reason            string
	}{
		{"application/x-www-form-urlencoded", "uids=a", http.StatusUnsupportedMediaType, "application/json"},
		{"application/json", `{"uid":"a"}`, http.StatusBadRequest, "uid"},
		{"application/json", `{}`, http.StatusBadRequest, "uids is required"},
		{"application/json", `{"uids":[]}`, http.StatusBadRequest, "uids is empty"},
		{"application/json", `{"uids":["a","b","c","d"]}`, http.StatusRequestEntityTooLarge, "too many uids"},
		{"application/json", `{"uids":[""]}`, http.StatusBadRequest, "uids[0] is empty"},
	} {
		code, _, body := ts.post("/online", tt.contentType, tt.body, nil)
		if code != tt.code || !strings.Contains(body, tt.reason) {
			t.Errorf("%s %s: %d %q, want %d with %q", tt.contentType, tt.body, code, body, tt.code, tt.reason)
		}
	}
	if code, _ := ts.do(http.MethodPost, "/online", "application/json", `{"uids":["a"]}`, "Bearer wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong API key = %d, want 401", code)
	}
}

// TestClusterOnline: /online on any node sees the uids of every node, in
// one lookup, on a single Redis and on a Redis Cluster.
func TestClusterOnline(t *testing.T) {
	redisCluster.OnEveryRedis(t, func(t *testing.T, be testutil.RedisBackend) {
		nodes := startCluster(t, be.URL, 2)
		a, b := nodes[0], nodes[1]
		var uids []string
		for i := range 20 {
			uid := fmt.Sprint("p", i)
			uids = append(uids, uid)
			if i%2 == 0 {
				dialSubscribed(t, nodes[i%4/2], uid, nodes[1-i%4/2])
			}
		}
		for _, ts := range []*testServer{a, b} {
			code, _, body := ts.post("/online", "application/json", `{"uids":["`+strings.Join(uids, `","`)+`"]}`, nil)
			want := `{"online":["p0","p2","p4","p6","p8","p10","p12","p14","p16","p18"],"offline":["p1","p3","p5","p7","p9","p11","p13","p15","p17","p19"]}` + "\n"
			if code != http.StatusOK || body != want {
				t.Errorf("/online = %d %q", code, body)
			}
		}
	})
}
