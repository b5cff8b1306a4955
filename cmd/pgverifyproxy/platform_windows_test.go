//go:build windows

package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// TestWindowsPinDir: the pins go to %LocalAppData%\pgverifyproxy;
// XDG_STATE_HOME and HOME do not matter; without LocalAppData the user is
// asked for --pin-dir.
func TestWindowsPinDir(t *testing.T) {
	real := os.Getenv("LocalAppData")
	got, err := chain.DefaultPinDir()
	if err != nil || !strings.EqualFold(got, real+`\pgverifyproxy`) {
		t.Errorf("DefaultPinDir() = %q, %v; want %q", got, err, real+`\pgverifyproxy`)
	}
	t.Setenv("XDG_STATE_HOME", `C:\xdg`)
	t.Setenv("HOME", `C:\home`)
	t.Setenv("LOCALAPPDATA", `D:\Profiles\me\Local`) // names are case-insensitive here
	if got, err := chain.DefaultPinDir(); err != nil || got != `D:\Profiles\me\Local\pgverifyproxy` {
		t.Errorf("DefaultPinDir() = %q, %v; want D:\\Profiles\\me\\Local\\pgverifyproxy", got, err)
	}
	t.Setenv("LocalAppData", "")
	if got, err := chain.DefaultPinDir(); err == nil || !strings.Contains(err.Error(), "set --pin-dir") {
		t.Errorf("DefaultPinDir() without LocalAppData = %q, %v; want an error asking for --pin-dir", got, err)
	}
}

// TestWindowsSystemRoots: the system pool is the platform's (Go hands the
// chain to the Windows verifier) with Mozilla's roots added: a public
// chain verifies, a private CA does not, and a root added to the pool is
// used by Go's verifier when the system's refuses, which is how the
// embedded roots complete the system store.
func TestWindowsSystemRoots(t *testing.T) {
	pool, err := chain.SystemRoots()
	if err != nil {
		t.Fatal(err)
	}
	if pool.Equal(x509.NewCertPool()) {
		t.Fatal("SystemRoots() is an empty plain pool")
	}
	data, err := os.ReadFile(publicChainFile)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: publicChainName,
		CurrentTime: time.Unix(publicChainTime, 0)})
	if err != nil {
		t.Fatalf("the public chain against SystemRoots(): %v", err)
	}
	if root := chains[0][len(chains[0])-1]; root.Subject.CommonName != "GTS Root R1" {
		t.Errorf("the public chain ends at %q, want GTS Root R1", root.Subject.CommonName)
	}

	private := selfSignedCA(t)
	if _, err := private.Verify(x509.VerifyOptions{Roots: pool}); err == nil {
		t.Fatal("a private CA verifies against SystemRoots()")
	}
	pool.AddCert(private)
	if _, err := private.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("a root added to the system pool is not used when the system refuses: %v", err)
	}
}
