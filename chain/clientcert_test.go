package chain_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

func TestClientCertificate(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := testpki.WritePEMFile(certFile, pki.Client.CertPEM); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pki.Client.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cc, err := chain.LoadClientCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), ClientCAs: []*testpki.Cert{pki.ClientCA}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	d := &chain.Dialer{Host: "localhost", Port: s.Port, Roots: testpki.Pool(pki.Root), ClientCert: cc, ConnectTimeout: 5 * time.Second}
	conn, err := d.Dial(context.Background())
	if err != nil {
		t.Fatalf("dial with a client certificate: %v", err)
	}
	conn.Write([]byte{0, 0, 0, 8, 0, 0, 0, 0}) // let the server finish its handshake
	conn.Close()

	d.ClientCert = nil
	if conn, err := d.Dial(context.Background()); err == nil {
		// TLS 1.3: the server's refusal arrives with the first read.
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("without a client certificate: %v; want the server's 'certificate required'", err)
		}
	}
	s.Close()
	if got := s.ClientCertSubjects(); len(got) != 1 || !strings.Contains(got[0], "CN="+testpki.CertUser) {
		t.Fatalf("server saw client certificates %q, want one for %s", got, testpki.CertUser)
	}
}

func TestLoadClientCertificateRefusals(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile := filepath.Join(dir, "c.crt")
	testpki.WritePEMFile(certFile, pki.Client.CertPEM)
	tests := []struct {
		name   string
		mode   os.FileMode
		key    []byte
		errHas string
	}{
		{name: "0600", mode: 0o600, key: pki.Client.KeyPEM},
		{name: "0400", mode: 0o400, key: pki.Client.KeyPEM},
		{name: "0700 (user execute is ignored)", mode: 0o700, key: pki.Client.KeyPEM},
		{name: "world-readable", mode: 0o644, key: pki.Client.KeyPEM, errHas: "chmod 0"},
		// The file is the current user's (root's too, when run as root):
		// libpq then wants 0600 or less; 0640 is allowed only for a
		// root-owned key read by another user.
		{name: "group-writable", mode: 0o660, key: pki.Client.KeyPEM, errHas: "chmod 0600"},
		{name: "group-readable", mode: 0o640, key: pki.Client.KeyPEM, errHas: "chmod 0600"},
		{name: "key of another certificate", mode: 0o600, key: pki.Leaf.KeyPEM, errHas: "private key does not match public key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keyFile := filepath.Join(dir, tc.name+".key")
			if err := os.WriteFile(keyFile, tc.key, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(keyFile, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := chain.LoadClientCertificate(certFile, keyFile)
			if tc.errHas == "" {
				if err != nil {
					t.Fatalf("got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("got %v; want %q", err, tc.errHas)
			}
		})
	}
}
