package main

import (
	"sort"
	"sync"
	"testing"
	"time"
)

func TestIDsUniqueUnderConcurrency(t *testing.T) {
	g, err := newIDGenerator()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now() // one millisecond for all: only the counter separates them
	const workers, each = 8, 20000
	ids := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				ids[w] = append(ids[w], g.next(now))
			}
		})
	}
	wg.Wait()
	seen := make(map[string]bool, workers*each)
	for _, list := range ids {
		for _, id := range list {
			if len(id) != 20 {
				t.Fatalf("id %q has length %d, want 20", id, len(id))
			}
			if seen[id] {
				t.Fatalf("duplicate id %q", id)
			}
			seen[id] = true
		}
	}
}

func TestIDsSortByTime(t *testing.T) {
	g, err := newIDGenerator()
	if err != nil {
		t.Fatal(err)
	}
	base := time.UnixMilli(1_700_000_000_000)
	var ids []string
	for i := range 100 {
		ids = append(ids, g.next(base.Add(time.Duration(i)*time.Millisecond)))
	}
	if !sort.StringsAreSorted(ids) {
		t.Errorf("ids of increasing times do not sort: %v", ids)
	}
}
