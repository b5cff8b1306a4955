package integration

import (
	"crypto/x509"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

func poolOf(certs ...*harness.Cert) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c.Cert)
	}
	return p
}
