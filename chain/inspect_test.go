package chain_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// scripted starts a scripted PostgreSQL server for the test.
func scripted(t *testing.T, o testpki.ScriptedOptions) *testpki.ScriptedServer {
	t.Helper()
	s, err := testpki.StartScriptedServer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// TestInspect: what Inspect reports of a verified upstream, of one that
// fails verify-full (with and without a capture), and of one that ends the
// session right after the handshake; none of them gets a startup message.
func TestInspect(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	good := scripted(t, testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate)})
	wantsCert := scripted(t, testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), ClientCAs: []*testpki.Cert{pki.ClientCA}})
	route := func(port int, ca string) *chain.RouteTrust {
		t.Helper()
		rt, err := chain.NewRouteTrust(chain.RouteConfig{Host: "localhost", Port: port, CAFile: ca, ConnectTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return rt
	}
	ctx := context.Background()

	t.Run("verified", func(t *testing.T) {
		rt := route(good.Port, caFile(t, pki.Root))
		in, err := chain.Inspect(ctx, rt.Dialer, chain.InspectOptions{Capture: true})
		if err != nil {
			t.Fatal(err)
		}
		if in.Captured || len(in.Handshake.Presented) != 2 || len(in.Path) != 3 || !in.Path[2].Equal(pki.Root.Cert) ||
			in.Handshake.TLSVersion == 0 || in.Handshake.RTT <= 0 || len(in.ThroughAIA) != 0 {
			t.Fatalf("got %+v (handshake %+v)", in, in.Handshake)
		}
	})
	t.Run("verify-full fails", func(t *testing.T) {
		rt := route(good.Port, caFile(t, pki.OtherRoot))
		in, err := chain.Inspect(ctx, rt.Dialer, chain.InspectOptions{})
		var de *chain.DialError
		if in != nil || !errors.As(err, &de) || de.Step != chain.StepVerify {
			t.Fatalf("without a capture: %+v, %v", in, err)
		}
		in, err = chain.Inspect(ctx, rt.Dialer, chain.InspectOptions{Capture: true})
		if in == nil || !in.Captured || in.Path != nil || len(in.Handshake.Presented) != 2 || !errors.As(err, &de) || de.Step != chain.StepVerify {
			t.Fatalf("with a capture: %+v, %v", in, err)
		}
		if r, hint := chain.Explain(err, rt.HintContext()); r != chain.ReasonVerification || !strings.Contains(hint, "the roots in --ca-file") {
			t.Fatalf("Explain: %v %q", r, hint)
		}
	})
	t.Run("client certificate refused after the handshake", func(t *testing.T) {
		rt := route(wantsCert.Port, caFile(t, pki.Root))
		in, err := chain.Inspect(ctx, rt.Dialer, chain.InspectOptions{Capture: true})
		var de *chain.DialError
		if in == nil || len(in.Path) != 3 || !errors.As(err, &de) || de.Step != chain.StepAfterHandshake || de.Alert != "certificate required" {
			t.Fatalf("got %+v, %v", in, err)
		}
		if r, hint := chain.Explain(err, rt.HintContext()); r != chain.ReasonClientCertificate || hint != chain.ClientCertHint {
			t.Fatalf("Explain: %v %q", r, hint)
		}
	})
	for _, s := range []*testpki.ScriptedServer{good, wantsCert} {
		if got := s.Startups(); len(got) != 0 {
			t.Errorf("a startup message reached the server: %v", got)
		}
	}
}

// TestInspectThroughAIA: a server that sends only its leaf is verified
// through the intermediate its AIA URL serves, and Inspect names that one;
// an intermediate the pin keeps is not named.
func TestInspectThroughAIA(t *testing.T) {
	root, err := testpki.NewRootCA("aia root")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := testpki.NewIntermediateCA(root, "aia intermediate")
	if err != nil {
		t.Fatal(err)
	}
	aia := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(inter.Cert.Raw) }))
	defer aia.Close()
	leaf, err := testpki.IssueLeaf(inter, testpki.LeafOptions{DNSNames: []string{"localhost"}, AIA: []string{aia.URL + "/inter.cer"}})
	if err != nil {
		t.Fatal(err)
	}
	s := scripted(t, testpki.ScriptedOptions{Cert: leaf.TLSCertificate()})
	pins := filepath.Join(t.TempDir(), "pins")
	if err := os.Mkdir(pins, 0o700); err != nil {
		t.Fatal(err)
	}
	rt, err := chain.NewRouteTrust(chain.RouteConfig{Host: "localhost", Port: s.Port, PinDir: pins, AIAAllowPrivate: true,
		ConnectTimeout: 5 * time.Second, Repin: "pgverifyproxy chain fetch --upstream here --repin"})
	if err != nil {
		t.Fatal(err)
	}
	if hc := rt.HintContext(); hc.Repin != rt.Repin || !strings.HasPrefix(hc.Trust, "the pinned anchor in "+pins) {
		t.Fatalf("hint context of a pinned route: %+v", hc)
	}
	if _, _, err := rt.LoadPin(); !errors.Is(err, chain.ErrNoPin) {
		t.Fatalf("LoadPin with no pin: %v", err)
	}
	now := time.Now()
	pin := &chain.Pin{Host: "localhost", Port: s.Port, Policy: "system", Anchors: []*x509.Certificate{root.Cert}, FirstSeen: now, Updated: now}
	in, err := chain.Inspect(context.Background(), rt.ReadOnly(pin, "pin.pem"), chain.InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Handshake.Presented) != 1 || len(in.Path) != 3 || len(in.ThroughAIA) != 1 || !in.ThroughAIA[0].Equal(inter.Cert) {
		t.Fatalf("got %+v", in)
	}
	pin.Intermediates = []*x509.Certificate{inter.Cert}
	if in, err = chain.Inspect(context.Background(), rt.ReadOnly(pin, "pin.pem"), chain.InspectOptions{}); err != nil || len(in.ThroughAIA) != 0 {
		t.Fatalf("with the intermediate pinned: %+v, %v", in, err)
	}
	// ReadOnly with no pin verifies against the system trust store, and
	// nothing ever writes a pin.
	if _, err := chain.Inspect(context.Background(), rt.ReadOnly(nil, ""), chain.InspectOptions{}); err == nil {
		t.Fatal("a private root passed against the system trust store")
	}
	if entries, _ := os.ReadDir(pins); len(entries) != 0 {
		t.Fatalf("Inspect wrote into the pin directory: %v", entries)
	}
}
