package proxy

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
)

// defaultGateways returns the gateways of the default routes (IPv4 from
// /proc/net/route, IPv6 from /proc/net/ipv6_route).
func defaultGateways() map[netip.Addr]bool {
	gw := map[netip.Addr]bool{}
	if f, err := os.Open("/proc/net/route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// Iface Destination Gateway Flags ...; hex, host byte order.
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 || fs[1] != "00000000" {
				continue
			}
			b, err := hex.DecodeString(fs[2])
			if err != nil || len(b) != 4 {
				continue
			}
			var a [4]byte
			binary.LittleEndian.PutUint32(a[:], binary.BigEndian.Uint32(b))
			if ip := netip.AddrFrom4(a); !ip.IsUnspecified() {
				gw[ip] = true
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/net/ipv6_route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// dest dest_len src src_len next_hop metric refcnt use flags iface
			fs := strings.Fields(sc.Text())
			if len(fs) < 5 || fs[1] != "00" || strings.Trim(fs[0], "0") != "" {
				continue
			}
			b, err := hex.DecodeString(fs[4])
			if err != nil || len(b) != 16 {
				continue
			}
			if ip := netip.AddrFrom16([16]byte(b)); !ip.IsUnspecified() {
				gw[ip] = true
			}
		}
		f.Close()
	}
	return gw
}
