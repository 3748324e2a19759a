package message

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// While stdout is stuck, calls are refused at once instead of piling their
// lines into the pending batch, and when stdout moves again the expired
// batch is not written: the log records no message /send refused, but for
// the one write that was already under way when stdout stuck (a line
// logged and refused is harmless; a message pushed unlogged would not be).
func TestStdoutLoggerStuckRefusesAtOnce(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close()
	l := NewStdoutLogger(pw, 50*time.Millisecond)
	big := strings.Repeat("x", 10000)
	refused := 0
	for i := range 2000 {
		if err := l.Log(context.Background(), Log{ID: "r" + string(rune('a'+i%26)), UIDs: []string{"u"}, Message: big}); err != nil {
			refused++
		}
	}
	l.mu.Lock()
	pendingBytes := 0
	if l.cur != nil {
		pendingBytes = len(l.cur.buf)
	}
	l.mu.Unlock()
	t.Logf("%d of 2000 Log calls refused; %d bytes waiting in the pending batch", refused, pendingBytes)
	if pendingBytes > 1<<20 {
		t.Errorf("the pending batch holds %d bytes of refused lines while stdout is stuck", pendingBytes)
	}
	// stdout moves again.
	lines := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines++
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.Close(ctx)
	pw.Close()
	<-done
	// The first call's batch was being written when stdout stuck.
	if lines > 2000-refused+1 {
		t.Errorf("%d lines written for %d accepted Log calls: the log records %d messages /send refused", lines, 2000-refused, lines-(2000-refused))
	}
}
