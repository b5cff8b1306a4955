package chain_test

import (
	"bytes"
	"crypto/x509"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// FuzzParsePin fuzzes chain.ParsePin, the reader of pin files. It checks
// that it never panics; that it returns a pin or an error, never both;
// that a pin it accepts has at least one anchor and no nil certificate;
// and, round trip through the writer, that Encode of a parsed pin parses to
// the same pin (upstream, policy, times, anchors and intermediates), and
// that Encode is then stable (encoding that again gives the same bytes).
func FuzzParsePin(f *testing.F) {
	root, err := testpki.NewRootCA("fuzz pin root")
	if err != nil {
		f.Fatal(err)
	}
	inter, err := testpki.NewIntermediateCA(root, "fuzz pin inter")
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	enc := func(p *chain.Pin) []byte {
		b, err := p.Encode()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	plain := enc(&chain.Pin{Host: "db.example.com", Port: 5432, Policy: "system", Anchors: []*x509.Certificate{root.Cert},
		FirstSeen: now, Updated: now})
	withInter := enc(&chain.Pin{Host: "10.0.0.7", Port: 6543, ServerName: "db.example.com", Policy: "tofu",
		Anchors: []*x509.Certificate{root.Cert}, Intermediates: []*x509.Certificate{inter.Cert}, FirstSeen: now, Updated: now.Add(time.Hour)})
	seeds := map[string][]byte{
		"pin":                    plain,
		"pin_intermediate":       withInter,
		"pin_two_anchors":        enc(&chain.Pin{Host: "h", Port: 1, Policy: "ca-file", Anchors: []*x509.Certificate{root.Cert, inter.Cert}, FirstSeen: now, Updated: now}),
		"pin_crlf":               bytes.ReplaceAll(plain, []byte("\n"), []byte("\r\n")),
		"pin_truncated":          plain[:len(plain)-40],
		"pin_no_meta":            root.CertPEM,
		"pin_meta_only":          []byte("# pgverifyproxy-meta: {\"version\":1,\"anchors\":[]}\n"),
		"pin_meta_bad_version":   []byte("# pgverifyproxy-meta: {\"version\":2}\n"),
		"pin_two_meta":           append(append([]byte(nil), plain...), []byte("# pgverifyproxy-meta: {}\n")...),
		"pin_extra_cert":         append(append([]byte(nil), plain...), inter.CertPEM...),
		"pin_swapped":            bytes.Replace(withInter, root.CertPEM, nil, 1),
		"pin_meta_after_the_pem": append(append([]byte(nil), root.CertPEM...), []byte("# pgverifyproxy-meta: {\"version\":1}\n")...),
	}
	writeFuzzSeeds(f, seeds)
	for _, b := range seeds {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := chain.ParsePin(data)
		if err != nil {
			if p != nil {
				t.Fatalf("a pin and an error: %v", err)
			}
			return
		}
		if p == nil || len(p.Anchors) == 0 {
			t.Fatalf("accepted a pin without an anchor")
		}
		for _, c := range append(append([]*x509.Certificate{}, p.Anchors...), p.Intermediates...) {
			if c == nil {
				t.Fatal("nil certificate in a parsed pin")
			}
		}
		b, err := p.Encode()
		if err != nil {
			t.Fatalf("a parsed pin does not encode: %v", err)
		}
		q, err := chain.ParsePin(b)
		if err != nil {
			t.Fatalf("an encoded pin does not parse: %v\n%s", err, b)
		}
		samePin(t, p, q)
		b2, err := q.Encode()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable: %v", err)
		}
	})
}

func samePin(t *testing.T, p, q *chain.Pin) {
	t.Helper()
	if p.Host != q.Host || p.Port != q.Port || p.ServerName != q.ServerName || p.Policy != q.Policy {
		t.Fatalf("round trip changed the upstream: %q %d %q %q -> %q %d %q %q", p.Host, p.Port, p.ServerName, p.Policy, q.Host, q.Port, q.ServerName, q.Policy)
	}
	if !p.FirstSeen.Equal(q.FirstSeen) || !p.Updated.Equal(q.Updated) {
		t.Fatalf("round trip changed the times: %v %v -> %v %v", p.FirstSeen, p.Updated, q.FirstSeen, q.Updated)
	}
	sameCerts := func(what string, a, b []*x509.Certificate) {
		if len(a) != len(b) {
			t.Fatalf("round trip changed the number of %s: %d -> %d", what, len(a), len(b))
		}
		for i := range a {
			if !a[i].Equal(b[i]) {
				t.Fatalf("round trip changed %s %d", what, i+1)
			}
		}
	}
	sameCerts("anchors", p.Anchors, q.Anchors)
	sameCerts("intermediates", p.Intermediates, q.Intermediates)
}
