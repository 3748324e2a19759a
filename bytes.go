package main

import "unsafe"

// StringToBytes returns the bytes of s without copying (the article's
// helper). The result must never be written to: it shares s's memory,
// which may be read-only.
func StringToBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// BytesToString returns b as a string without copying. b must not be
// modified afterwards, or the string changes under its readers.
func BytesToString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
