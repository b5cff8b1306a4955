package chain_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// certSpec describes a test certificate for mkCert.
type certSpec struct {
	cn       string
	dns      []string
	ips      []string
	ca       bool
	key      *ecdsa.PrivateKey // nil: a new key (pass one to cross-sign)
	subject  *pkix.Name        // overrides cn as the whole subject
	permit   []string          // permitted DNS name constraints
	exclude  []string          // excluded DNS name constraints
	notAfter time.Time
}

// mkCert issues a certificate from spec, signed by parent (self-signed when
// parent is nil).
func mkCert(t *testing.T, parent *harness.Cert, spec certSpec) *harness.Cert {
	t.Helper()
	key := spec.key
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	subject := pkix.Name{CommonName: spec.cn, Organization: []string{"pgverifyproxy chain tests"}}
	if spec.subject != nil {
		subject = *spec.subject
	}
	notAfter := spec.notAfter
	if notAfter.IsZero() {
		notAfter = now.Add(48 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               subject,
		DNSNames:              spec.dns,
		NotBefore:             now.Add(-2 * time.Hour),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  spec.ca,
		PermittedDNSDomains:   spec.permit,
		ExcludedDNSDomains:    spec.exclude,
	}
	for _, s := range spec.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	if spec.ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.MaxPathLen = -1
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	issuer, signer := tmpl, any(key)
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &harness.Cert{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// certs returns the parsed certificates of cs.
func certs(cs ...*harness.Cert) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cs))
	for i, c := range cs {
		out[i] = c.Cert
	}
	return out
}
