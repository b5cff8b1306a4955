//go:build !linux

package rawsock

import "net"

// NewWriter returns nil: outside Linux, writes go through net.Conn.Write
// (see Writer).
func NewWriter(net.Conn) *Writer { return nil }

// Disable does nothing: outside Linux, nothing is wrapped anyway.
func Disable() {}
