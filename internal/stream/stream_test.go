package stream

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestFramesReadByAClient: each length form of the header (7-bit, 16-bit
// and 64-bit), the JSON frame and the control frames are read back by
// gorilla's client as what they say.
func TestFramesReadByAClient(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		m := NewMessage("x", []byte(strings.Repeat("a", n)), time.Now())
		wire := append(append([]byte(nil), m.Header()...), m.Data...)
		if int64(len(wire)) != m.FrameLen() {
			t.Fatalf("n=%d: FrameLen %d, wire %d", n, m.FrameLen(), len(wire))
		}
		if typ, got := readAsClient(t, wire); typ != websocket.TextMessage || len(got) != n {
			t.Errorf("n=%d: client read type %d, %d bytes", n, typ, len(got))
		}
	}

	it := Item{M: NewMessage("06a1r3k6c7l2q0e9f1s8", []byte("h\"i\n\x01é"), time.Now()), Off: 7, Epoch: "ab12"}
	_, got := readAsClient(t, AppendJSONFrame(nil, it))
	var f struct{ ID, Offset, Message string }
	if err := json.Unmarshal(got, &f); err != nil || f.ID != it.M.ID || f.Offset != "ab12:7" || f.Message != string(it.M.Data) {
		t.Errorf("JSON frame %q read as %+v, %v", got, f, err)
	}
	ctl := Item{M: NewMessage("", []byte(`{"recovered":true}`), time.Time{}), Ctl: true}
	if _, got := readAsClient(t, AppendJSONFrame(nil, ctl)); string(got) != `{"recovered":true}` {
		t.Errorf("control item frame read as %q", got)
	}

	long := strings.Repeat("é", 100) // 200 bytes: cut on a rune boundary
	_, err := readErrAsClient(t, AppendCloseFrame(nil, 4001, long))
	ce, ok := errors.AsType[*websocket.CloseError](err)
	if !ok || ce.Code != 4001 || !strings.HasPrefix(long, ce.Text) || len(ce.Text) > 123 {
		t.Errorf("close frame read as %v", err)
	}
}

// readAsClient feeds raw server bytes to a gorilla client connection
// and returns the first message it reads.
func readAsClient(t *testing.T, raw []byte) (int, []byte) {
	t.Helper()
	typ, data, err := readMessage(t, raw)
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	return typ, data
}

func readErrAsClient(t *testing.T, raw []byte) ([]byte, error) {
	t.Helper()
	_, data, err := readMessage(t, raw)
	return data, err
}

func readMessage(t *testing.T, raw []byte) (int, []byte, error) {
	t.Helper()
	server, client := net.Pipe()
	defer server.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		// A handshake answer, then the frame.
		req, err := http.ReadRequest(bufio.NewReader(server))
		if err != nil {
			return
		}
		h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		// The client stops reading at a frame it refuses and closes the
		// pipe: then a write fails, and the client's error is the result.
		_, _ = server.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(h[:]) + "\r\n\r\n"))
		_, _ = server.Write(raw)
	})
	d := websocket.Dialer{NetDial: func(string, string) (net.Conn, error) { return client, nil }}
	conn, _, err := d.Dial("ws://pipe/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	return conn.ReadMessage()
}

func TestAppendJSONStringIsJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"b\s`, "\n\r\t\x00\x1f\x7f", "é😀", "\xff\xfe", "<script>"} {
		b := AppendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("AppendJSONString(%q) = %s: %v", s, b, err)
			continue
		}
		want := strings.Map(func(r rune) rune { return r }, s) // each invalid byte becomes U+FFFD
		if back != want {
			t.Errorf("AppendJSONString(%q) reads back as %q, want %q", s, back, want)
		}
	}
}

func TestParsePosition(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Position
		ok   bool
	}{
		{"ab12:7", Position{"ab12", 7}, true},
		{"ab12:0", Position{"ab12", 0}, true},
		{"ab12", Position{}, false},
		{":7", Position{}, false},
		{"AB:7", Position{}, false},
		{"ab:-1", Position{}, false},
		{"ab:x", Position{}, false},
		{strings.Repeat("a", MaxEpochLen+1) + ":1", Position{}, false},
	} {
		got, err := ParsePosition(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParsePosition(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
		if tt.ok && got.String() != tt.in {
			t.Errorf("ParsePosition(%q).String() = %q", tt.in, got.String())
		}
	}
	e1, err1 := NewEpoch()
	e2, err2 := NewEpoch()
	if err1 != nil || err2 != nil || e1 == e2 {
		t.Errorf("NewEpoch = %q, %q, %v, %v", e1, e2, err1, err2)
	}
	if _, err := ParsePosition(e1 + ":1"); err != nil {
		t.Errorf("a new epoch does not parse: %v", err)
	}
}

func TestCheckUID(t *testing.T) {
	for _, tt := range []struct {
		uid  string
		want string
	}{
		{"alice", ""},
		{"用户-42", ""},
		{strings.Repeat("u", MaxUIDLen), ""},
		{"", "is empty"},
		{strings.Repeat("u", MaxUIDLen+1), "is longer than 128 bytes"},
		{"\xff", "is not valid UTF-8"},
		{"a\nb", "contains a control character"},
		{"\x1b[31m", "contains a control character"},
		{"del\x7f", "contains a control character"},
		{"c1\u0085", "contains a control character"},
	} {
		err := CheckUID(tt.uid)
		if err != nil {
			if got := err.Error(); got != tt.want {
				t.Errorf("CheckUID(%q) = %q, want %q", tt.uid, got, tt.want)
			}
		} else if tt.want != "" {
			t.Errorf("CheckUID(%q) = nil, want %q", tt.uid, tt.want)
		}
	}
}

func TestIDsUniqueUnderConcurrency(t *testing.T) {
	g, err := NewIDGenerator()
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
				ids[w] = append(ids[w], g.Next(now))
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
	g, err := NewIDGenerator()
	if err != nil {
		t.Fatal(err)
	}
	base := time.UnixMilli(1_700_000_000_000)
	var ids []string
	for i := range 100 {
		ids = append(ids, g.Next(base.Add(time.Duration(i)*time.Millisecond)))
	}
	if !sort.StringsAreSorted(ids) {
		t.Errorf("ids of increasing times do not sort: %v", ids)
	}
}
