package message

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// goroutine a logger starts is stopped by its Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
