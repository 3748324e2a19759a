package message

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendLine(t *testing.T) {
	tests := []struct {
		name string
		log  Log
		want string
	}{
		{
			"unicast",
			Log{ID: "a1", UIDs: []string{"u1"}, Message: "hi"},
			`send message: {"id":"a1","uid":"u1","message":"hi"}` + "\n",
		},
		{
			"multicast",
			Log{ID: "a2", UIDs: []string{"u1", "u2"}, Message: "hi"},
			`send message: {"id":"a2","uids":["u1","u2"],"message":"hi"}` + "\n",
		},
		{
			"escapes",
			Log{ID: "a3", UIDs: []string{`q"u`}, Message: "a\\b\n\t\r\x01<é>"},
			`send message: {"id":"a3","uid":"q\"u","message":"a\\b\n\t\r\u0001<é>"}` + "\n",
		},
		{
			"invalid utf8",
			Log{ID: "a4", UIDs: []string{"u"}, Message: "x\xffy"},
			`send message: {"id":"a4","uid":"u","message":"x\ufffdy"}` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendLine(nil, tt.log))
			if got != tt.want {
				t.Errorf("AppendLine(%+v) = %q, want %q", tt.log, got, tt.want)
			}
		})
	}
}

// FuzzAppendLine checks that every line is the prefix and valid JSON that
// decodes back to the message (modulo invalid UTF-8, which becomes U+FFFD).
func FuzzAppendLine(f *testing.F) {
	f.Add("u1", "hello")
	f.Add("\x00", "\"\\\u2028\xff")
	f.Fuzz(func(t *testing.T, uid, msg string) {
		line := string(AppendLine(nil, Log{ID: "x", UIDs: []string{uid}, Message: msg}))
		body, ok := strings.CutPrefix(line, "send message: ")
		if !ok || !strings.HasSuffix(body, "\n") {
			t.Fatalf("line %q lacks prefix or newline", line)
		}
		var got struct{ ID, UID, Message string }
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		// Ranging over a string yields U+FFFD for each invalid byte, as the
		// encoder writes it.
		want := strings.Map(func(r rune) rune { return r }, msg)
		if got.ID != "x" || got.UID != strings.Map(func(r rune) rune { return r }, uid) || got.Message != want {
			t.Fatalf("decoded %+v, want message %q", got, want)
		}
	})
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestStdoutLoggerWriteError(t *testing.T) {
	l := newTestStdoutLogger(t, failingWriter{}, 0)
	err := l.Log(context.Background(), Log{ID: "a", UIDs: []string{"u"}, Message: "m"})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Log() error = %v, want the write error", err)
	}
}

// slowWriter records each write and takes a while, so that lines pile up.
type slowWriter struct {
	mu     sync.Mutex
	writes []string
	fail   bool
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	if w.fail {
		return 0, errors.New("pipe closed")
	}
	return len(p), nil
}

// TestStdoutLoggerGroupCommit: concurrent lines share writes, each line is
// written once and whole, and every Log returns after its line's write.
func TestStdoutLoggerGroupCommit(t *testing.T) {
	w := &slowWriter{}
	l := newTestStdoutLogger(t, w, 0)
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("m%03d", i)
			if err := l.Log(context.Background(), Log{ID: id, UIDs: []string{"u"}, Message: "x"}); err != nil {
				t.Errorf("Log: %v", err)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if !strings.Contains(strings.Join(w.writes, ""), `"id":"`+id+`"`) {
				t.Errorf("Log(%s) returned before its line was written", id)
			}
		})
	}
	wg.Wait()
	all := strings.Join(w.writes, "")
	for i := range n {
		if c := strings.Count(all, fmt.Sprintf(`"id":"m%03d"`, i)); c != 1 {
			t.Fatalf("line m%03d written %d times", i, c)
		}
	}
	if lines := strings.Count(all, "\n"); lines != n {
		t.Fatalf("%d lines written, want %d", lines, n)
	}
	if len(w.writes) >= n {
		t.Errorf("%d writes for %d concurrent lines: no group commit", len(w.writes), n)
	}
	t.Logf("%d lines in %d writes", n, len(w.writes))
}

func TestStdoutLoggerGroupCommitError(t *testing.T) {
	w := &slowWriter{fail: true}
	l := newTestStdoutLogger(t, w, 0)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if err := l.Log(context.Background(), Log{ID: "a", UIDs: []string{"u"}, Message: "m"}); err == nil || !strings.Contains(err.Error(), "pipe closed") {
				t.Errorf("Log() = %v, want the write error", err)
			}
		})
	}
	wg.Wait()
}

// newTestStdoutLogger is a StdoutLogger closed when the test ends.
func newTestStdoutLogger(t *testing.T, w io.Writer, timeout time.Duration) *StdoutLogger {
	l := NewStdoutLogger(w, timeout)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// stuckWriter blocks every write until released: a stdout pipe nobody
// reads.
type stuckWriter struct{ release chan struct{} }

func (w stuckWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// TestStdoutLoggerTimeout: a stdout that takes no writes makes Log fail
// within the timeout, so that /send answers 503 instead of hanging.
func TestStdoutLoggerTimeout(t *testing.T) {
	w := stuckWriter{release: make(chan struct{})}
	l := newTestStdoutLogger(t, w, 50*time.Millisecond)
	defer close(w.release) // before Close: let the writer finish
	start := time.Now()
	for range 3 {
		err := l.Log(context.Background(), Log{ID: "a", UIDs: []string{"u"}, Message: "m"})
		if err == nil || !strings.Contains(err.Error(), "no answer in 50ms") {
			t.Fatalf("Log() = %v, want a timeout", err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("three Log calls took %s with a 50ms timeout", d)
	}
}

// TestStdoutLoggerCloseFlushes: what was logged before Close is written.
func TestStdoutLoggerCloseFlushes(t *testing.T) {
	var buf strings.Builder
	l := NewStdoutLogger(&buf, 0)
	if err := l.Log(context.Background(), Log{ID: "a", UIDs: []string{"u"}, Message: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"id":"a"`) {
		t.Errorf("written %q", buf.String())
	}
	if err := l.Log(context.Background(), Log{ID: "b", UIDs: []string{"u"}, Message: "m"}); err == nil {
		t.Error("Log after Close succeeded")
	}
}

// On a regular file a call writes its own line when no write is under
// way, and hands it to the writer goroutine when one is: every line of
// concurrent callers arrives whole, once.
func TestStdoutLoggerRegularFile(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "messages")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l := newTestStdoutLogger(t, f, 5*time.Second)
	if !l.direct {
		t.Fatal("logger on a regular file does not write in place")
	}
	const callers, each = 32, 200
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("c%d-%d", c, i)
				if err := l.Log(context.Background(), Log{ID: id, UIDs: []string{"u"}, Message: "m"}); err != nil {
					t.Errorf("Log(%s): %v", id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	data, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for line := range strings.SplitSeq(strings.TrimSuffix(string(data), "\n"), "\n") {
		var m struct{ ID string }
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "send message: ")), &m); err != nil || seen[m.ID] {
			t.Fatalf("line %q: %v, or a repeat", line, err)
		}
		seen[m.ID] = true
	}
	if len(seen) != callers*each {
		t.Errorf("file has %d lines; want %d", len(seen), callers*each)
	}
	if l.inPlace.Load() == 0 {
		t.Error("no Log call wrote its line itself")
	}

	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(context.Background(), Log{ID: "late", UIDs: []string{"u"}, Message: "m"}); err == nil {
		t.Error("Log after Close succeeded")
	}
	if after, _ := os.ReadFile(f.Name()); len(after) != len(data) {
		t.Errorf("Log after Close wrote %q", after[len(data):])
	}
}

// A write error on the file reaches the call that wrote in place.
func TestStdoutLoggerRegularFileWriteError(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "messages")
	if err != nil {
		t.Fatal(err)
	}
	l := newTestStdoutLogger(t, f, 5*time.Second)
	f.Close()
	if err := l.Log(context.Background(), Log{ID: "a", UIDs: []string{"u"}, Message: "m"}); err == nil || l.inPlace.Load() != 1 {
		t.Errorf("Log on a closed file = %v after %d writes in place; want the write error from one", err, l.inPlace.Load())
	}
}

func TestStdoutLoggerWritesInPlaceOnlyToRegularFiles(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name string
		w    io.Writer
	}{{"pipe", w}, {"buffer", new(strings.Builder)}, {"nil file", (*os.File)(nil)}} {
		if isRegularFile(tc.w) {
			t.Errorf("%s counted as a regular file: its reader could stall a /send", tc.name)
		}
	}
}

func BenchmarkStdoutLogger(b *testing.B) {
	l := NewStdoutLogger(io.Discard, 0)
	defer l.Close(context.Background())
	m := Log{ID: "06a1r3k6c7l2q0e9f1s8", UIDs: []string{"user-42"}, Message: `{"type":"notice","text":"hello"}`, Time: time.Now()}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Log(context.Background(), m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestStdoutLoggerSeveral: the lines of one Log call go out in one write,
// in order.
func TestStdoutLoggerSeveral(t *testing.T) {
	w := &slowWriter{}
	l := newTestStdoutLogger(t, w, 0)
	ms := []Log{
		{ID: "m1", UIDs: []string{"u"}, Message: "one"},
		{ID: "m2", UIDs: []string{"u", "v"}, Message: "two"},
	}
	if err := l.Log(context.Background(), ms...); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	want := string(AppendLine(AppendLine(nil, ms[0]), ms[1]))
	if len(w.writes) != 1 || w.writes[0] != want {
		t.Errorf("writes %q, want one write %q", w.writes, want)
	}
}
