package message

import "context"

// NoneLogger records nothing (-message-log=none).
type NoneLogger struct{}

var _ Logger = NoneLogger{}

// Log implements Logger.
func (NoneLogger) Log(context.Context, ...Log) error { return nil }

// Update implements Logger.
func (NoneLogger) Update(string, string, Status) {}

// Ready implements Logger.
func (NoneLogger) Ready(context.Context) error { return nil }

// Close implements Logger.
func (NoneLogger) Close(context.Context) error { return nil }
