package chain_test

import (
	"bytes"
	"encoding/pem"
	"testing"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// FuzzParseCertificates fuzzes the parser of AIA caIssuers answers (DER,
// PEM, PKCS#7 certs-only in DER or PEM). It checks that it never panics;
// that it returns certificates or an error, never both, never an empty
// list, never a nil certificate; that every certificate it returns is
// exactly the DER of a certificate found in the input; and, round trip,
// that an input that is one DER certificate parses to exactly that
// certificate, as does its PEM encoding.
func FuzzParseCertificates(f *testing.F) {
	root, err := testpki.NewRootCA("fuzz root")
	if err != nil {
		f.Fatal(err)
	}
	inter, err := testpki.NewIntermediateCA(root, "fuzz inter")
	if err != nil {
		f.Fatal(err)
	}
	t := &testing.T{}
	seeds := map[string][]byte{
		"der":               inter.Cert.Raw,
		"pem":               inter.CertPEM,
		"pem_bundle":        append(append([]byte(nil), inter.CertPEM...), root.CertPEM...),
		"pem_key_first":     append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), inter.CertPEM...),
		"pkcs7_der":         pkcs7CertsOnly(t, inter, root),
		"pkcs7_pem":         pemPKCS7(pkcs7CertsOnly(t, inter)),
		"pkcs7_empty":       pkcs7CertsOnly(t),
		"pkcs7_trailing":    append(pkcs7CertsOnly(t, inter), 0),
		"der_truncated":     inter.Cert.Raw[:len(inter.Cert.Raw)/2],
		"pem_header":        []byte("-----BEGIN CERTIFICATE-----\n"),
		"html":              []byte("<html><body>404 Not Found</body></html>"),
		"pem_bad_pkcs7":     pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: []byte("nope")}),
		"der_trailing_zero": append(append([]byte(nil), inter.Cert.Raw...), 0, 0),
	}
	writeFuzzSeeds(f, seeds)
	for _, b := range seeds {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := chain.ParseCertificates(data)
		if err != nil {
			if certs != nil {
				t.Fatalf("certificates and an error: %v", err)
			}
		} else if len(certs) == 0 {
			t.Fatal("no certificate and no error")
		}
		for i, c := range certs {
			if c == nil {
				t.Fatalf("certificate %d is nil", i)
			}
			if !bytes.Contains(data, c.Raw) && !pemHolds(data, c.Raw) {
				t.Fatalf("certificate %d (%s) is not in the input", i, c.Subject)
			}
		}
		// Round trip: the first certificate of the answer, on its own.
		if len(certs) > 0 {
			der := certs[0].Raw
			for _, in := range [][]byte{der, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})} {
				again, err := chain.ParseCertificates(in)
				if err != nil || len(again) != 1 || !again[0].Equal(certs[0]) {
					t.Fatalf("a certificate it returned does not parse back to itself: %v", err)
				}
			}
		}
	})
}

// pemHolds reports whether a PEM block of data carries der, or a block
// whose bytes contain it (PKCS#7).
func pemHolds(data, der []byte) bool {
	rest := bytes.TrimSpace(data)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return false
		}
		if bytes.Contains(b.Bytes, der) {
			return true
		}
	}
}
