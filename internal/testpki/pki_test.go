package testpki

import (
	"crypto/x509"
	"errors"
	"testing"
)

func TestPKIChains(t *testing.T) {
	p, err := NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.Root.Cert)
	inters := x509.NewCertPool()
	inters.AddCert(p.Intermediate.Cert)
	verify := func(c *Cert, name string) error {
		_, err := c.Cert.Verify(x509.VerifyOptions{
			DNSName:       name,
			Roots:         roots,
			Intermediates: inters,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		return err
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := verify(p.Leaf, name); err != nil {
			t.Errorf("Leaf for %q: %v", name, err)
		}
	}
	for _, c := range []struct {
		name string
		cert *Cert
	}{{"Expired", p.Expired}, {"NotYetValid", p.NotYetValid}} {
		var ci x509.CertificateInvalidError
		if err := verify(c.cert, "localhost"); !errors.As(err, &ci) || ci.Reason != x509.Expired {
			t.Errorf("%s: got %v, want x509.Expired", c.name, err)
		}
	}
	var ua x509.UnknownAuthorityError
	if err := verify(p.OtherLeaf, "localhost"); !errors.As(err, &ua) {
		t.Errorf("OtherLeaf against Root: got %v, want unknown authority", err)
	}
	if err := verify(p.SelfSigned, "localhost"); !errors.As(err, &ua) {
		t.Errorf("SelfSigned against Root: got %v, want unknown authority", err)
	}
	var hn x509.HostnameError
	if err := verify(p.WrongName, "localhost"); !errors.As(err, &hn) {
		t.Errorf("WrongName: got %v, want hostname error", err)
	}
	if err := verify(p.WrongName, "wrong.example.invalid"); err != nil {
		t.Errorf("WrongName for its own name: %v", err)
	}
	if p.SelfSigned.Cert.IsCA || p.Leaf.Cert.IsCA {
		t.Error("leaf certificates must not be CAs")
	}
	other := x509.NewCertPool()
	other.AddCert(p.OtherRoot.Cert)
	if _, err := p.OtherLeaf.Cert.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: other}); err != nil {
		t.Errorf("OtherLeaf against OtherRoot: %v", err)
	}
	tc := p.Leaf.TLSCertificate(p.Intermediate)
	if len(tc.Certificate) != 2 || tc.PrivateKey == nil {
		t.Errorf("TLSCertificate: %d certificates", len(tc.Certificate))
	}
}
