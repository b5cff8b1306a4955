//go:build !linux

package proxy

import "net/netip"

// defaultGateways returns no gateways outside Linux: the link rule there
// does not exclude them (docs/trust-model.md says so).
func defaultGateways() map[netip.Addr]bool { return nil }
