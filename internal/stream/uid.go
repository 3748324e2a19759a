package stream

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxUIDLen is the longest uid, in bytes, in a token or a /send body.
const MaxUIDLen = 128

// CheckUID is the rule for a uid, in a token or in a /send body: 1 to
// MaxUIDLen bytes of valid UTF-8 without control characters (a uid ends
// up in log lines, Redis keys and close reasons, where a newline or an
// escape sequence would be read as something else).
func CheckUID(uid string) error {
	switch {
	case uid == "":
		return errors.New("is empty")
	case len(uid) > MaxUIDLen:
		return fmt.Errorf("is longer than %d bytes", MaxUIDLen)
	case !utf8.ValidString(uid):
		return errors.New("is not valid UTF-8")
	case strings.ContainsFunc(uid, unicode.IsControl):
		return errors.New("contains a control character")
	}
	return nil
}
