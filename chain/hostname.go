package chain

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net"
	"slices"
	"strings"
)

// oidCommonName is the X.520 commonName attribute.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// HostnameMatch says how VerifyHostname accepted a certificate.
type HostnameMatch int

const (
	// MatchSAN means a subjectAltName entry matched.
	MatchSAN HostnameMatch = iota + 1
	// MatchCommonName means the subject CN matched because the certificate has
	// no subjectAltName of the host's type (libpq's fallback).
	MatchCommonName
)

// VerifyHostname checks cert against host with libpq's verify-full rules
// (PostgreSQL 14 and later, fe-secure-openssl.c):
//
//   - every dNSName SAN is compared with host, case-insensitively; a pattern
//     may hold "*" only as the whole left-most label, and it matches exactly
//     one non-empty label;
//   - every iPAddress SAN is compared byte for byte with host when host is an
//     IP literal of the same family;
//   - the subject CN is consulted only when the certificate carries no SAN of
//     the host's type (dNSName for a host name, iPAddress for an IP literal).
//
// Go's own crypto/x509 never consults the CN; pgverifyproxy follows libpq so
// that whatever `sslmode=verify-full` accepts, the proxy accepts, and nothing
// more. host is the configured name (or server_name), never a resolved address.
func VerifyHostname(cert *x509.Certificate, host string) (HostnameMatch, error) {
	if cert == nil {
		return 0, fmt.Errorf("no certificate to check against host name %q", host)
	}
	// As libpq: the host is an IP address when inet_aton (IPv4, in any of
	// its notations) or inet_pton (IPv6) parses it; a bracketed IPv6
	// literal is neither, and is compared as text, as a name.
	v4, isV4 := inetAton(host)
	var v6 net.IP
	if strings.Contains(host, ":") {
		v6 = net.ParseIP(host)
	}
	isIP := isV4 || v6 != nil

	checkCN := true
	for _, name := range cert.DNSNames {
		if !isIP {
			checkCN = false
		}
		if strings.IndexByte(name, 0) >= 0 {
			return 0, &HostnameError{Host: host, Cert: cert, Reason: "the certificate's name contains an embedded NUL byte"}
		}
		if matchName(name, host) {
			return MatchSAN, nil
		}
	}
	for _, ip := range cert.IPAddresses {
		if isIP {
			checkCN = false
		}
		// libpq compares a 4-byte SAN with inet_aton(host), a 16-byte one
		// with inet_pton(AF_INET6, host), byte for byte.
		switch {
		case len(ip) == net.IPv4len && isV4 && net.IP(v4[:]).Equal(ip):
			return MatchSAN, nil
		case len(ip) == net.IPv6len && v6 != nil && slices.Equal([]byte(v6.To16()), []byte(ip)):
			return MatchSAN, nil
		}
	}
	if checkCN {
		if cn, ok := firstCommonName(cert); ok {
			if strings.IndexByte(cn, 0) >= 0 {
				return 0, &HostnameError{Host: host, Cert: cert, Reason: "the certificate's common name contains an embedded NUL byte"}
			}
			if matchName(cn, host) {
				return MatchCommonName, nil
			}
		}
	}
	return 0, &HostnameError{Host: host, Cert: cert}
}

// matchName compares one certificate name (possibly a wildcard) with host the
// way libpq does.
func matchName(pattern, host string) bool {
	if asciiEqualFold(pattern, host) {
		return true
	}
	return wildcardMatch(pattern, host)
}

// asciiEqualFold compares a and b folding ASCII letters only, as libpq's
// pg_strcasecmp does: strings.EqualFold would also fold Unicode (the Kelvin
// sign U+212A would match "k"), accepting names libpq refuses.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// wildcardMatch implements libpq's wildcard_certificate_match: the pattern must
// start with "*.", the rest must equal the end of host, and the part of host
// covered by "*" must be one non-empty label.
func wildcardMatch(pattern, host string) bool {
	if len(pattern) < 3 || pattern[0] != '*' || pattern[1] != '.' {
		return false
	}
	suffix := pattern[1:] // ".example.com"
	if len(host) <= len(suffix) {
		return false
	}
	if !asciiEqualFold(host[len(host)-len(suffix):], suffix) {
		return false
	}
	label := host[:len(host)-len(suffix)]
	return !strings.Contains(label, ".")
}

// firstCommonName returns the first CN attribute of the subject, as OpenSSL's
// X509_NAME_get_index_by_NID(..., -1) does.
func firstCommonName(cert *x509.Certificate) (string, bool) {
	for _, atv := range cert.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			s, ok := atv.Value.(string)
			return s, ok
		}
	}
	return "", false
}

// verifyHostnameChains applies VerifyHostname to the leaf of verified chains
// (leaf first, anchor last, as x509.Verify returns them) and, when only
// the CN matched, the DNS (or, for an IP literal, IP) name constraints of
// every CA of the chain to that CN, as OpenSSL does. crypto/x509 applies
// name constraints to SANs only, so without this a sub-CA permitted only
// example.com could vouch for CN=db.victim.net on a leaf without a dNSName.
// It returns the chains that pass, in their order.
func verifyHostnameChains(chains [][]*x509.Certificate, host string) ([][]*x509.Certificate, HostnameMatch, error) {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, 0, fmt.Errorf("no verified chain to check against host name %q", host)
	}
	leaf := chains[0][0]
	match, err := VerifyHostname(leaf, host)
	if err != nil {
		return nil, 0, err
	}
	if match != MatchCommonName {
		return chains, match, nil // the same leaf, the same SAN, on every chain
	}
	cn, _ := firstCommonName(leaf)
	var passed [][]*x509.Certificate
	var firstErr error
	for _, c := range chains {
		err := cnWithinConstraints(c, cn)
		if err == nil {
			passed = append(passed, c)
		} else if firstErr == nil {
			firstErr = err
		}
	}
	if len(passed) == 0 {
		return nil, 0, &HostnameError{Host: strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), Cert: leaf, Reason: firstErr.Error()}
	}
	return passed, MatchCommonName, nil
}

// cnWithinConstraints checks a CN used as the server's name against the name
// constraints of each CA in chain (chain[0] is the leaf).
func cnWithinConstraints(chain []*x509.Certificate, cn string) error {
	ip := net.ParseIP(cn)
	for _, ca := range chain[1:] {
		if ip != nil {
			if len(ca.PermittedIPRanges) > 0 && !ipInRanges(ip, ca.PermittedIPRanges) {
				return fmt.Errorf("its common name %s is outside the IP ranges CA %s may vouch for (name constraints)", Quote(cn), Quote(ca.Subject.String()))
			}
			if ipInRanges(ip, ca.ExcludedIPRanges) {
				return fmt.Errorf("its common name %s is in an IP range CA %s must not vouch for (name constraints)", Quote(cn), Quote(ca.Subject.String()))
			}
			continue
		}
		if len(ca.PermittedDNSDomains) > 0 && !slices.ContainsFunc(ca.PermittedDNSDomains, func(d string) bool { return withinDomain(cn, d) }) {
			return fmt.Errorf("its common name %s is outside the domains CA %s may vouch for (name constraints permit only %s)", Quote(cn), Quote(ca.Subject.String()), QuoteAll(ca.PermittedDNSDomains))
		}
		if slices.ContainsFunc(ca.ExcludedDNSDomains, func(d string) bool { return withinDomain(cn, d) }) {
			return fmt.Errorf("its common name %s is in a domain CA %s must not vouch for (name constraints exclude %s)", Quote(cn), Quote(ca.Subject.String()), QuoteAll(ca.ExcludedDNSDomains))
		}
	}
	return nil
}

// withinDomain applies an RFC 5280 dNSName constraint: "example.com" covers
// that name and every name under it, ".example.com" only the names under it,
// "" every name. A wildcard CN is compared as written ("*.example.com" is
// under example.com).
func withinDomain(name, constraint string) bool {
	name = strings.TrimSuffix(name, ".")
	if constraint == "" {
		return true
	}
	if strings.HasPrefix(constraint, ".") {
		return len(name) > len(constraint) && asciiEqualFold(name[len(name)-len(constraint):], constraint)
	}
	if asciiEqualFold(name, constraint) {
		return true
	}
	return len(name) > len(constraint)+1 && name[len(name)-len(constraint)-1] == '.' &&
		asciiEqualFold(name[len(name)-len(constraint):], constraint)
}

func ipInRanges(ip net.IP, ranges []*net.IPNet) bool {
	for _, r := range ranges {
		if r.Contains(ip) {
			return true
		}
	}
	return false
}

// HostnameError reports a certificate that is not valid for the host name.
type HostnameError struct {
	// Host is the name that was checked.
	Host string
	// Cert is the leaf certificate.
	Cert *x509.Certificate
	// Reason overrides the default explanation when set; any certificate
	// text in it is quoted already.
	Reason string
}

// CertNames lists the names a certificate carries, SANs first, then the CN.
func CertNames(cert *x509.Certificate) []string {
	var names []string
	names = append(names, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	if cn, ok := firstCommonName(cert); ok && cn != "" {
		names = append(names, "CN="+cn)
	}
	return names
}

func (e *HostnameError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("certificate is not valid for host name %q: %s", e.Host, e.Reason)
	}
	names := QuotedNames(e.Cert)
	if names == "" {
		return fmt.Sprintf("certificate is not valid for host name %q: it carries no names at all", e.Host)
	}
	return fmt.Sprintf("certificate is not valid for host name %q: it is valid for %s", e.Host, names)
}

// inetAton parses an IPv4 address as glibc's inet_aton does, which libpq
// uses for the host it checks a certificate's IP address against: one to
// four parts separated by dots, each decimal, octal (a leading 0) or
// hexadecimal (0x), the last part filling the bytes that remain
// ("192.0.2.1", "192.000.002.001" (octal zeros), "0xc0.0.2.1", "192.0.513",
// "3221225985" are all 192.0.2.1). Unlike glibc it accepts nothing after
// the address (glibc ignores what follows a space).
func inetAton(s string) (addr [4]byte, ok bool) {
	var parts []uint64
	for part := range strings.SplitSeq(s, ".") {
		if len(parts) == 4 || part == "" || part[0] < '0' || part[0] > '9' {
			return addr, false
		}
		base, digits := uint64(10), part
		switch {
		case len(part) >= 2 && part[0] == '0' && (part[1] == 'x' || part[1] == 'X'):
			base, digits = 16, part[2:]
		case part[0] == '0':
			base, digits = 8, part[1:]
		}
		var v uint64
		for i := 0; i < len(digits); i++ {
			d, ok := hexDigit(digits[i])
			if !ok || d >= base {
				return addr, false
			}
			if v = v*base + d; v > 0xffffffff {
				return addr, false
			}
		}
		parts = append(parts, v)
	}
	last := parts[len(parts)-1]
	limit := uint64(0xffffffff) >> (8 * (len(parts) - 1))
	if last > limit {
		return addr, false
	}
	var n uint64
	for i, p := range parts[:len(parts)-1] {
		if p > 0xff {
			return addr, false
		}
		n |= p << (24 - 8*i)
	}
	n |= last
	return [4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, true
}

// hexDigit returns the value of a hexadecimal digit.
func hexDigit(c byte) (uint64, bool) {
	switch {
	case c >= '0' && c <= '9':
		return uint64(c - '0'), true
	case c >= 'a' && c <= 'f':
		return uint64(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return uint64(c-'A') + 10, true
	}
	return 0, false
}
