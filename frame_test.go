package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestTextFrameHeaderLengths: each length form of the header (7-bit, 16-bit
// and 64-bit) is read back by gorilla's client as one text message.
func TestTextFrameHeaderLengths(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		m := newMessage("x", []byte(strings.Repeat("a", n)), time.Now())
		var wire bytes.Buffer
		wire.Write(m.header())
		wire.Write(m.Data)
		if int64(wire.Len()) != m.frameLen() {
			t.Fatalf("n=%d: frameLen %d, wire %d", n, m.frameLen(), wire.Len())
		}
		got := readFrameAsClient(t, wire.Bytes())
		if len(got) != n {
			t.Errorf("n=%d: client read %d bytes", n, len(got))
		}
	}
}

// readFrameAsClient feeds raw server bytes to a gorilla client connection
// and returns the first message it reads.
func readFrameAsClient(t *testing.T, raw []byte) []byte {
	t.Helper()
	server, client := net.Pipe()
	defer server.Close()
	go func() {
		// A handshake answer, then the frame.
		br := bufio.NewReader(server)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		server.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(req) + "\r\n\r\n"))
		server.Write(raw)
	}()
	d := websocket.Dialer{NetDial: func(string, string) (net.Conn, error) { return client, nil }}
	conn, _, err := d.Dial("ws://pipe/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, data, err := conn.ReadMessage()
	if err != nil || typ != websocket.TextMessage {
		t.Fatalf("ReadMessage = %d, %v", typ, err)
	}
	return data
}

// acceptKey is the Sec-WebSocket-Accept answer to req (RFC 6455 4.2.2).
func acceptKey(req *http.Request) string {
	h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}
