package main

import (
	"context"
	"fmt"
	"io"

	"go-pusher/message"
)

// openMessageLog returns the logger -message-log names.
func openMessageLog(_ context.Context, cfg Config, stdout io.Writer) (message.Logger, error) {
	switch cfg.MessageLog {
	case "stdout":
		return message.NewStdoutLogger(stdout), nil
	case "none":
		return message.NoneLogger{}, nil
	}
	return nil, fmt.Errorf("-message-log %s: not available in this build", cfg.MessageLog)
}
