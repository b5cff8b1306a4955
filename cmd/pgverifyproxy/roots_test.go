package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// The public chain of testdata/www.google.com-2023.pem and where it must
// lead: GTS Root R1, found only in the embedded Mozilla bundle.
const (
	publicChainFile = "testdata/www.google.com-2023.pem"
	publicChainName = "www.google.com"
	// publicChainTime is when the leaf was valid (2023-02-28), the time Go's
	// own crypto/x509 tests verify it at.
	publicChainTime = 1677615892
	gtsRootR1SHA256 = "d947432abde7b7fa90fc2e6b59101b1280e0e1c7e4e40fa3c6887fff57a7f4cf"
	rootsChildEnv   = "PGVP_TEST_ROOTS_CHILD"
	rootsReportTag  = "roots-child-report: "
)

// rootsReport is what the child saw, for the parent to judge whether the
// test was meaningful.
type rootsReport struct {
	SSLCertFile     string   `json:"ssl_cert_file"`
	SSLCertFileSize int64    `json:"ssl_cert_file_size"`
	SSLCertDir      string   `json:"ssl_cert_dir"`
	SSLCertDirFiles int      `json:"ssl_cert_dir_files"`
	HomeSet         bool     `json:"home_set"`
	XDGSet          []string `json:"xdg_set"`
	GODEBUG         string   `json:"godebug"`
	PinDirError     string   `json:"pin_dir_error"`
	PoolEmpty       bool     `json:"pool_empty"`
	Chain           []string `json:"chain"`
	RootSHA256      string   `json:"root_sha256"`
	PrivateRootErr  string   `json:"private_root_error"`
}

// TestRootsEmbeddedFallback proves the binary trusts public CAs in a scratch
// image: with no HOME and a host trust store that is empty (SSL_CERT_FILE an
// empty file, SSL_CERT_DIR an empty directory), chain.SystemRoots() is the
// Mozilla bundle embedded through golang.org/x/crypto/x509roots/fallback
// (imported by trust.go), and it verifies a real public chain. The check runs
// in a child process: the system pool is loaded once per process.
func TestRootsEmbeddedFallback(t *testing.T) {
	if os.Getenv(rootsChildEnv) == "1" {
		rootsChild(t)
		return
	}
	dir := t.TempDir()
	emptyFile := filepath.Join(dir, "empty.pem")
	emptyDir := filepath.Join(dir, "certs")
	if err := os.WriteFile(emptyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(emptyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "HOME", name == "GODEBUG", name == "SSL_CERT_FILE", name == "SSL_CERT_DIR",
			strings.HasPrefix(name, "XDG_"), strings.HasPrefix(name, envPrefix+"_"):
			continue
		}
		env = append(env, kv)
	}
	env = append(env, rootsChildEnv+"=1", "SSL_CERT_FILE="+emptyFile, "SSL_CERT_DIR="+emptyDir)
	cmd := exec.Command(os.Args[0], "-test.run=^TestRootsEmbeddedFallback$", "-test.count=1", "-test.v")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestRootsEmbeddedFallback") {
		t.Fatalf("the child did not run the test:\n%s", out)
	}
	var rep rootsReport
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, rootsReportTag); i >= 0 {
			if err := json.Unmarshal([]byte(line[i+len(rootsReportTag):]), &rep); err != nil {
				t.Fatalf("child report %q: %v", line, err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("no report from the child:\n%s", out)
	}
	t.Logf("child: %+v", rep)

	// The child's environment was a scratch image's: no host roots at all,
	// no HOME, and nothing forcing the fallback (GODEBUG=x509usefallbackroots=1).
	if rep.SSLCertFile != emptyFile || rep.SSLCertFileSize != 0 {
		t.Errorf("child SSL_CERT_FILE %q (%d bytes), want the empty file %q", rep.SSLCertFile, rep.SSLCertFileSize, emptyFile)
	}
	if rep.SSLCertDir != emptyDir || rep.SSLCertDirFiles != 0 {
		t.Errorf("child SSL_CERT_DIR %q (%d files), want the empty directory %q", rep.SSLCertDir, rep.SSLCertDirFiles, emptyDir)
	}
	if rep.HomeSet || len(rep.XDGSet) > 0 || rep.GODEBUG != "" {
		t.Errorf("child environment: HOME set %v, XDG %v, GODEBUG %q; want none", rep.HomeSet, rep.XDGSet, rep.GODEBUG)
	}
	if !strings.Contains(rep.PinDirError, "set --pin-dir") {
		t.Errorf("child DefaultPinDir error %q: without HOME the pin directory must be asked for", rep.PinDirError)
	}
	// And in it the embedded roots took over and did their job.
	if rep.PoolEmpty {
		t.Error("chain.SystemRoots() is empty in the child: the embedded fallback did not apply")
	}
	if want := []string{publicChainName, "GTS CA 1C3", "GTS Root R1"}; strings.Join(rep.Chain, " > ") != strings.Join(want, " > ") {
		t.Errorf("child verified chain %q, want %q", rep.Chain, want)
	}
	if rep.RootSHA256 != gtsRootR1SHA256 {
		t.Errorf("child chain ends at a root with SHA-256 %s, want GTS Root R1 %s", rep.RootSHA256, gtsRootR1SHA256)
	}
	if !strings.Contains(rep.PrivateRootErr, "unknown authority") {
		t.Errorf("child: a private root's certificate gave %q, want an unknown-authority error", rep.PrivateRootErr)
	}
}

// rootsChild runs in the child process, checks and reports.
func rootsChild(t *testing.T) {
	var rep rootsReport
	rep.SSLCertFile = os.Getenv("SSL_CERT_FILE")
	if fi, err := os.Stat(rep.SSLCertFile); err == nil {
		rep.SSLCertFileSize = fi.Size()
	} else {
		rep.SSLCertFileSize = -1
	}
	rep.SSLCertDir = os.Getenv("SSL_CERT_DIR")
	if ents, err := os.ReadDir(rep.SSLCertDir); err == nil {
		rep.SSLCertDirFiles = len(ents)
	} else {
		rep.SSLCertDirFiles = -1
	}
	_, rep.HomeSet = os.LookupEnv("HOME")
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "XDG_") {
			rep.XDGSet = append(rep.XDGSet, kv)
		}
	}
	rep.GODEBUG = os.Getenv("GODEBUG")
	if _, err := chain.DefaultPinDir(); err != nil {
		rep.PinDirError = err.Error()
	}
	defer func() {
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		// Printed on standard output for the parent, whatever happened.
		os.Stdout.WriteString("\n" + rootsReportTag + string(b) + "\n")
	}()

	pool, err := chain.SystemRoots()
	if err != nil {
		t.Fatalf("chain.SystemRoots(): %v", err)
	}
	rep.PoolEmpty = pool.Equal(x509.NewCertPool())
	if rep.PoolEmpty {
		t.Fatal("chain.SystemRoots() is empty")
	}

	data, err := os.ReadFile(publicChainFile)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) != 2 {
		t.Fatalf("%s: %d certificates, want the leaf and its intermediate", publicChainFile, len(certs))
	}
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	chains, err := certs[0].Verify(x509.VerifyOptions{
		DNSName: publicChainName, Roots: pool, Intermediates: inter,
		CurrentTime: time.Unix(publicChainTime, 0),
	})
	if err != nil {
		t.Fatalf("verifying the public chain against the embedded roots: %v", err)
	}
	for _, c := range chains[0] {
		rep.Chain = append(rep.Chain, c.Subject.CommonName)
	}
	sum := sha256.Sum256(chains[0][len(chains[0])-1].Raw)
	rep.RootSHA256 = hex.EncodeToString(sum[:])

	// The pool is not "anything goes": a private root is unknown.
	private := selfSignedCA(t)
	_, err = private.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: time.Now()})
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Errorf("a private root against the embedded roots: %v, want an unknown-authority error", err)
	}
	if err != nil {
		rep.PrivateRootErr = err.Error()
	}
}

// selfSignedCA makes a throwaway CA certificate no public store holds.
func selfSignedCA(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pgverifyproxy roots test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
