// Package stream is the vocabulary every other part of go-pusher shares:
// an accepted message and its WebSocket frames, an item queued on one
// connection, a place in a uid's stream (epoch and offset), message ids,
// and the rule for a uid. It imports nothing of go-pusher's, so that the
// server, history, the cluster transport and the loggers can all use it
// without reaching into each other.
package stream
