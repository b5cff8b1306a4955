//go:build !linux

package rawsock

import (
	"errors"
	"net"
)

// NewWriter returns nil: outside Linux, writes go through net.Conn.Write
// (see Writer).
func NewWriter(net.Conn) *Writer { return nil }

// Disable does nothing: outside Linux, nothing is wrapped anyway.
func Disable() {}

// Claim is Linux's hand-over of a socket (see rawsock_linux.go); nothing is
// handed over here.
type Claim struct{}

// Take refuses: outside Linux no socket leaves Go's poller.
func Take(net.Conn) (*Claim, error) { return nil, errors.New("rawsock: no hand-over on this system") }

// Commit is never reached (Take refuses).
func (*Claim) Commit(Transport) int { return -1 }

// FD is never reached (Take refuses).
func (*Claim) FD() int { return -1 }

// Abandon is never reached (Take refuses).
func (*Claim) Abandon() {}
