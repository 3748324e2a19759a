package main

import (
	"testing"
	"unsafe"
)

func TestStringToBytes(t *testing.T) {
	for _, s := range []string{"", "a", "hello, 世界"} {
		b := StringToBytes(s)
		if string(b) != s || len(b) != len(s) {
			t.Errorf("StringToBytes(%q) = %q", s, b)
		}
		if len(s) > 0 && unsafe.SliceData(b) != unsafe.StringData(s) {
			t.Errorf("StringToBytes(%q) copied the bytes", s)
		}
	}
}

func TestBytesToString(t *testing.T) {
	for _, b := range [][]byte{nil, {}, []byte("a"), []byte("hello, 世界")} {
		s := BytesToString(b)
		if s != string(b) {
			t.Errorf("BytesToString(%q) = %q", b, s)
		}
		if len(b) > 0 && unsafe.StringData(s) != unsafe.SliceData(b) {
			t.Errorf("BytesToString(%q) copied the bytes", b)
		}
	}
}

func TestBytesRoundTripAllocs(t *testing.T) {
	s := "no allocation on the way there and back"
	allocs := testing.AllocsPerRun(100, func() {
		if BytesToString(StringToBytes(s)) != s {
			t.Fatal("round trip changed the string")
		}
	})
	if allocs != 0 {
		t.Errorf("round trip allocates %v times, want 0", allocs)
	}
}
