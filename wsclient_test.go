package main

// What the tests use to talk WebSocket to the server: gorilla's client
// with deadlines, and a raw client that sees every frame.

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// readText reads the next message and wants a text frame.
func readText(t *testing.T, conn *websocket.Conn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("read frame type %d, want text", typ)
	}
	return string(data)
}

// readClose reads until the close frame and returns it.
func readClose(t *testing.T, conn *websocket.Conn) *websocket.CloseError {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := conn.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read: %v, want a close frame", err)
		}
		return ce
	}
}

// wantClose reads until the close frame and checks its code and reason.
func wantClose(t *testing.T, conn *websocket.Conn, code int, reason string) {
	t.Helper()
	ce := readClose(t, conn)
	if ce.Code != code || ce.Text != reason {
		t.Fatalf("close = %d %q, want %d %q", ce.Code, ce.Text, code, reason)
	}
}

// rawWS is a minimal client that sees every frame the server writes.
type rawWS struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRawWS(t *testing.T, addr, path string) *rawWS {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var k [16]byte
	rand.Read(k[:])
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		path, addr, base64.StdEncoding.EncodeToString(k[:])); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(c, 1<<16)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	resp.Body.Close() // a 101 has no body: the frames follow in br
	return &rawWS{c, br}
}

func (r *rawWS) readFrame() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r.br, h[:]); err != nil {
		return
	}
	op = h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err = io.ReadFull(r.br, b[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err = io.ReadFull(r.br, b[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r.br, payload)
	return
}

// closeReply writes a masked close frame with code 1000, as a client
// answers the server's close.
func (r *rawWS) closeReply() {
	mask := [4]byte{1, 2, 3, 4}
	payload := []byte{0x03 ^ mask[0], 0xe8 ^ mask[1]}
	// The server may have closed the connection already: then there is
	// nothing left to answer.
	_, _ = r.c.Write(append([]byte{0x88, 0x80 | 2, mask[0], mask[1], mask[2], mask[3]}, payload...))
}

// readyz asks /readyz after dropping the server's cached answer, so that a
// test waiting for readiness to change sees the change at once.
func (ts *testServer) readyz() (int, string) {
	ts.t.Helper()
	ts.ready.mu.Lock()
	ts.ready.checked = time.Time{}
	ts.ready.mu.Unlock()
	return ts.get("/readyz")
}
