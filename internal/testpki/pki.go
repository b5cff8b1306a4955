package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// CertUser is the common name of PKI.Client, and so the user name it logs in
// as where the server maps certificates to users by CN (pg_hba "cert"), as
// integration/harness's cluster does.
const CertUser = "cert_user"

// Cert is a certificate with its private key.
type Cert struct {
	// Cert is the parsed certificate.
	Cert *x509.Certificate
	// Key is the certificate's ECDSA P-256 private key.
	Key crypto.Signer
	// CertPEM is the certificate as a PEM "CERTIFICATE" block.
	CertPEM []byte
	// KeyPEM is the private key as a PKCS#8 PEM "PRIVATE KEY" block.
	KeyPEM []byte
}

// TLSCertificate returns c with the given chain certificates appended (e.g.
// the intermediate), for use in a tls.Config.
func (c *Cert) TLSCertificate(chain ...*Cert) tls.Certificate {
	tc := tls.Certificate{
		Certificate: [][]byte{c.Cert.Raw},
		PrivateKey:  c.Key,
		Leaf:        c.Cert,
	}
	for _, ch := range chain {
		tc.Certificate = append(tc.Certificate, ch.Cert.Raw)
	}
	return tc
}

// ChainPEM returns c's PEM followed by each chain certificate's PEM.
func (c *Cert) ChainPEM(chain ...*Cert) []byte {
	out := append([]byte(nil), c.CertPEM...)
	for _, ch := range chain {
		out = append(out, ch.CertPEM...)
	}
	return out
}

// LeafOptions describe a server certificate.
type LeafOptions struct {
	// CommonName is the subject common name.
	CommonName string
	// DNSNames are the DNS subject alternative names.
	DNSNames []string
	// IPs are the IP address subject alternative names.
	IPs []net.IP
	// NotBefore and NotAfter bound the validity period; when zero they
	// default to now-1h and now+24h respectively.
	NotBefore, NotAfter time.Time
	// AIA are caIssuers URLs (Authority Information Access) pointing at
	// the issuer's certificate.
	AIA []string
	// Client makes a client certificate (ExtKeyUsageClientAuth) instead of
	// a server certificate.
	Client bool
}

// NewRootCA returns a self-signed CA certificate (MaxPathLen 1, key usage
// CertSign|CRLSign) valid from now-1h to now+48h.
func NewRootCA(commonName string) (*Cert, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"pgverifyproxy tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	c, err := newCert(tmpl, nil)
	if err != nil {
		return nil, fmt.Errorf("testpki: root CA %q: %w", commonName, err)
	}
	return c, nil
}

// NewIntermediateCA returns a CA certificate for commonName issued by parent
// (MaxPathLen 0, key usage CertSign|CRLSign), valid from now-1h to now+48h.
func NewIntermediateCA(parent *Cert, commonName string) (*Cert, error) {
	return NewIntermediateCAWithAIA(parent, commonName, nil)
}

// NewIntermediateCAWithAIA is NewIntermediateCA with caIssuers URLs that
// point at parent's certificate.
func NewIntermediateCAWithAIA(parent *Cert, commonName string, aia []string) (*Cert, error) {
	if parent == nil {
		return nil, fmt.Errorf("testpki: intermediate CA %q: nil parent", commonName)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"pgverifyproxy tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		IssuingCertificateURL: aia,
	}
	c, err := newCert(tmpl, parent)
	if err != nil {
		return nil, fmt.Errorf("testpki: intermediate CA %q: %w", commonName, err)
	}
	return c, nil
}

// IssueLeaf returns a server certificate (ExtKeyUsageServerAuth, or
// ExtKeyUsageClientAuth with o.Client; key usage DigitalSignature) issued by
// parent. When parent is nil the certificate is
// self-signed (and still not a CA).
func IssueLeaf(parent *Cert, o LeafOptions) (*Cert, error) {
	return IssueLeafWithSubject(parent, pkix.Name{CommonName: o.CommonName, Organization: []string{"pgverifyproxy tests"}}, o)
}

// newCert generates a P-256 key and signs tmpl with parent's key, or
// self-signs when parent is nil.
func newCert(tmpl *x509.Certificate, parent *Cert) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial: %w", err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		if parent.Cert == nil || parent.Key == nil {
			return nil, errors.New("parent has no certificate or key")
		}
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	return &Cert{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}, nil
}

// WritePEMFile writes the concatenation of pemBlocks to path with mode 0644
// (a newline is inserted after a block that does not end in one).
func WritePEMFile(path string, pemBlocks ...[]byte) error {
	if err := os.WriteFile(path, JoinPEM(pemBlocks...), 0o644); err != nil {
		return fmt.Errorf("testpki: writing PEM file: %w", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		return fmt.Errorf("testpki: writing PEM file: %w", err)
	}
	return nil
}

// JoinPEM concatenates PEM blocks, making sure each ends in a newline.
func JoinPEM(blocks ...[]byte) []byte {
	var out []byte
	for _, b := range blocks {
		out = append(out, b...)
		if len(b) > 0 && b[len(b)-1] != '\n' {
			out = append(out, '\n')
		}
	}
	return out
}

// PKI is the standard set of certificates used by tests.
type PKI struct {
	// Root is "pgverifyproxy test root CA".
	Root *Cert
	// Intermediate is "pgverifyproxy test intermediate CA", issued by Root.
	Intermediate *Cert
	// Leaf is issued by Intermediate: CN "localhost", DNS localhost, IPs
	// 127.0.0.1 and ::1.
	Leaf *Cert
	// OtherRoot is an unrelated root CA ("other test root CA").
	OtherRoot *Cert
	// OtherLeaf is issued by OtherRoot with the same names as Leaf.
	OtherLeaf *Cert
	// WrongName is issued by Intermediate for "wrong.example.invalid" only
	// (CN and DNS), with no IPs.
	WrongName *Cert
	// Expired is issued by Intermediate with Leaf's names, valid from
	// now-48h to now-24h.
	Expired *Cert
	// NotYetValid is issued by Intermediate with Leaf's names, valid from
	// now+24h to now+48h.
	NotYetValid *Cert
	// SelfSigned is a self-signed leaf with Leaf's names.
	SelfSigned *Cert
	// ClientCA signs client certificates (the server's ssl_ca_file).
	ClientCA *Cert
	// Client is a client certificate for CertUser, issued by ClientCA.
	Client *Cert
}

// NewPKI generates the standard PKI.
func NewPKI() (*PKI, error) {
	now := time.Now()
	local := func() LeafOptions {
		return LeafOptions{
			CommonName: "localhost",
			DNSNames:   []string{"localhost"},
			IPs:        []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		}
	}
	var (
		p   PKI
		err error
	)
	if p.Root, err = NewRootCA("pgverifyproxy test root CA"); err != nil {
		return nil, err
	}
	if p.Intermediate, err = NewIntermediateCA(p.Root, "pgverifyproxy test intermediate CA"); err != nil {
		return nil, err
	}
	if p.Leaf, err = IssueLeaf(p.Intermediate, local()); err != nil {
		return nil, err
	}
	if p.OtherRoot, err = NewRootCA("other test root CA"); err != nil {
		return nil, err
	}
	if p.OtherLeaf, err = IssueLeaf(p.OtherRoot, local()); err != nil {
		return nil, err
	}
	wrong := LeafOptions{CommonName: "wrong.example.invalid", DNSNames: []string{"wrong.example.invalid"}}
	if p.WrongName, err = IssueLeaf(p.Intermediate, wrong); err != nil {
		return nil, err
	}
	expired := local()
	expired.NotBefore, expired.NotAfter = now.Add(-48*time.Hour), now.Add(-24*time.Hour)
	if p.Expired, err = IssueLeaf(p.Intermediate, expired); err != nil {
		return nil, err
	}
	future := local()
	future.NotBefore, future.NotAfter = now.Add(24*time.Hour), now.Add(48*time.Hour)
	if p.NotYetValid, err = IssueLeaf(p.Intermediate, future); err != nil {
		return nil, err
	}
	if p.SelfSigned, err = IssueLeaf(nil, local()); err != nil {
		return nil, err
	}
	if p.ClientCA, err = NewRootCA("pgverifyproxy test client CA"); err != nil {
		return nil, err
	}
	if p.Client, err = IssueLeaf(p.ClientCA, LeafOptions{CommonName: CertUser, Client: true}); err != nil {
		return nil, err
	}
	return &p, nil
}

// Pool returns a certificate pool holding certs, e.g. the test root as the
// only trust anchor.
func Pool(certs ...*Cert) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c.Cert)
	}
	return p
}

// IssueLeafWithSubject is IssueLeaf with the whole subject given instead of
// o.CommonName (which it ignores), e.g. a subject whose attributes hold
// hostile text. When parent is nil the certificate is self-signed, and its
// issuer is the same subject.
func IssueLeafWithSubject(parent *Cert, subject pkix.Name, o LeafOptions) (*Cert, error) {
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	usage := x509.ExtKeyUsageServerAuth
	if o.Client {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{
		Subject:               subject,
		DNSNames:              append([]string(nil), o.DNSNames...),
		IPAddresses:           append([]net.IP(nil), o.IPs...),
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IssuingCertificateURL: append([]string(nil), o.AIA...),
	}
	c, err := newCert(tmpl, parent)
	if err != nil {
		return nil, fmt.Errorf("testpki: leaf %q: %w", subject.CommonName, err)
	}
	return c, nil
}
