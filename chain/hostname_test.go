package chain

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"strings"
	"testing"
)

func certWith(cn string, dns []string, ips ...string) *x509.Certificate {
	c := &x509.Certificate{DNSNames: dns}
	if cn != "" {
		c.Subject = pkix.Name{CommonName: cn, Names: []pkix.AttributeTypeAndValue{{Type: oidCommonName, Value: cn}}}
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if v4 := ip.To4(); v4 != nil {
			ip = v4 // as crypto/x509 parses a 4-byte iPAddress
		}
		c.IPAddresses = append(c.IPAddresses, ip)
	}
	return c
}

func TestVerifyHostnameLibpqRules(t *testing.T) {
	tests := []struct {
		name string
		cert *x509.Certificate
		host string
		want HostnameMatch // 0: must fail
	}{
		{"exact dNSName", certWith("", []string{"db.example.com"}), "db.example.com", MatchSAN},
		{"case-insensitive", certWith("", []string{"DB.Example.COM"}), "db.example.com", MatchSAN},
		{"second SAN", certWith("", []string{"a.example.com", "db.example.com"}), "db.example.com", MatchSAN},
		{"wildcard one label", certWith("", []string{"*.example.com"}), "db.example.com", MatchSAN},
		{"wildcard not two labels", certWith("", []string{"*.example.com"}), "a.db.example.com", 0},
		{"wildcard not the bare domain", certWith("", []string{"*.example.com"}), "example.com", 0},
		{"wildcard not empty label", certWith("", []string{"*.example.com"}), ".example.com", 0},
		{"partial-label wildcard refused", certWith("", []string{"db*.example.com"}), "db1.example.com", 0},
		{"wildcard not in the middle", certWith("", []string{"db.*.com"}), "db.example.com", 0},
		{"lone star refused", certWith("", []string{"*"}), "localhost", 0},
		{"other name", certWith("", []string{"other.example.com"}), "db.example.com", 0},
		{"IPv4 SAN", certWith("", nil, "127.0.0.1"), "127.0.0.1", MatchSAN},
		{"IPv4 SAN other address", certWith("", nil, "127.0.0.2"), "127.0.0.1", 0},
		{"IPv6 SAN", certWith("", nil, "::1"), "::1", MatchSAN},
		// libpq compares a bracketed literal as text (inet_pton refuses it).
		{"IPv6 SAN, bracketed host is a name", certWith("", nil, "::1"), "[::1]", 0},
		{"bracketed host matches a dNSName as text", certWith("", []string{"[::1]"}), "[::1]", MatchSAN},
		// inet_aton's notations, as libpq parses the host.
		{"IPv4 SAN, zero-padded octal parts", certWith("", nil, "192.0.2.1"), "192.000.002.001", MatchSAN},
		{"IPv4 SAN, hexadecimal part", certWith("", nil, "192.0.2.1"), "0xc0.0.2.1", MatchSAN},
		{"IPv4 SAN, three parts", certWith("", nil, "192.0.2.1"), "192.0.513", MatchSAN},
		{"IPv4 SAN, one number", certWith("", nil, "192.0.2.1"), "3221225985", MatchSAN},
		{"IPv4 SAN, octal 010 is 8", certWith("", nil, "10.0.0.1"), "010.0.0.1", 0},
		{"IPv4 SAN, octal 010 is 8 (match)", certWith("", nil, "8.0.0.1"), "010.0.0.1", MatchSAN},
		{"IPv4 SAN, not an address: 08", certWith("", nil, "8.0.0.1"), "08.0.0.1", 0},
		{"IPv4 SAN, a part too large", certWith("", nil, "192.0.2.1"), "192.0.2.256", 0},
		{"IPv4 SAN, five parts", certWith("", nil, "192.0.2.1"), "192.0.2.1.0", 0},
		{"IPv4 SAN, trailing dot", certWith("", nil, "192.0.2.1"), "192.0.2.1.", 0},
		{"an inet_aton address is an IP: no CN fallback past an IP SAN", certWith("0xc0.0.2.1", nil, "192.0.2.9"), "0xc0.0.2.1", 0},
		{"IPv4-mapped IPv6 host is not a 4-byte SAN", certWith("", nil, "192.0.2.1"), "::ffff:192.0.2.1", 0},
		{"IP SAN is not a DNS name", certWith("", nil, "127.0.0.1"), "localhost", 0},
		{"dNSName holding an IP text matches (libpq compares text)", certWith("", []string{"127.0.0.1"}), "127.0.0.1", MatchSAN},
		// CN: consulted only when no SAN of the host's type exists.
		{"CN only", certWith("db.example.com", nil), "db.example.com", MatchCommonName},
		{"CN wildcard only", certWith("*.example.com", nil), "db.example.com", MatchCommonName},
		{"CN ignored when a dNSName exists", certWith("db.example.com", []string{"other.example.com"}), "db.example.com", 0},
		{"CN used for a name when only IP SANs exist", certWith("db.example.com", nil, "10.0.0.1"), "db.example.com", MatchCommonName},
		{"CN used for an IP when only dNSNames exist", certWith("127.0.0.1", []string{"db.example.com"}), "127.0.0.1", MatchCommonName},
		{"CN ignored for an IP when an IP SAN exists", certWith("127.0.0.1", nil, "10.0.0.1"), "127.0.0.1", 0},
		{"no names at all", certWith("", nil), "db.example.com", 0},
		{"embedded NUL", certWith("", []string{"db.example.com\x00.evil.com"}), "db.example.com", 0},
		// libpq folds ASCII only (pg_strcasecmp): the Kelvin sign U+212A,
		// which Unicode folds to "k", does not match "k".
		{"Unicode case folding refused (Kelvin sign)", certWith("", []string{"db.\u212a.example"}), "db.k.example", 0},
		{"Unicode case folding refused in a wildcard", certWith("", []string{"*.\u212a.example"}), "db.k.example", 0},
		{"Unicode case folding refused in the CN", certWith("db.\u212a.example", nil), "db.k.example", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := VerifyHostname(tc.cert, tc.host)
			if tc.want == 0 {
				var he *HostnameError
				if err == nil || !errors.As(err, &he) {
					t.Fatalf("got match %v, err %v; want a HostnameError", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestHostnameErrorListsCertificateNames(t *testing.T) {
	_, err := VerifyHostname(certWith("wrong.example.invalid", []string{"wrong.example.invalid", "alt.example.invalid"}, "192.0.2.7"), "localhost")
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{`"localhost"`, "wrong.example.invalid", "alt.example.invalid", "192.0.2.7"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
