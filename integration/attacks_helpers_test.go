//go:build linux

package integration

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// attackObserver records the proxy's refusals and session ends per route.
type attackObserver struct {
	mu       sync.Mutex
	refusals map[string][]string
	ended    map[string][]proxy.SessionResult
}

func (o *attackObserver) RoutesChanged([]string)                              {}
func (o *attackObserver) SessionStarted(string)                               {}
func (o *attackObserver) UpstreamDialed(string, string, time.Duration, error) {}

func (o *attackObserver) SessionEnded(route string, r proxy.SessionResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ended[route] = append(o.ended[route], r)
}

func (o *attackObserver) Refused(route string, cause chain.Reason) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refusals[route] = append(o.refusals[route], cause.String())
}

func (o *attackObserver) snapshot(route string) (refusals []string, ended []proxy.SessionResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.refusals[route]...), append([]proxy.SessionResult(nil), o.ended[route]...)
}

// attackProxy is one in-process proxy.Server with two routes: "bad", whose
// upstream is hostile, and "good", to the real cluster. Both serve at once,
// so a refusal on one can be checked not to harm the other.
type attackProxy struct {
	srv       *proxy.Server
	obs       *attackObserver
	badPort   int
	goodPort  int
	badDials  *atomic.Int32
	goodDials *atomic.Int32
	bad, good string // route names
}

// startAttackProxy serves bad (a dialer to the hostile upstream, described
// by trust in hints) and a good route to the cluster on two loopback
// listeners of the same proxy.Server.
// tweak, when set, adjusts the bad route.
func startAttackProxy(t *testing.T, bad *chain.Dialer, trust string, tweak ...func(*proxy.Route)) *attackProxy {
	t.Helper()
	good := &chain.Dialer{Host: "localhost", Port: cluster.Port, Roots: testpki.Pool(pki.Root), ConnectTimeout: 10 * time.Second}
	tcfg, err := proxy.SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	ap := &attackProxy{obs: &attackObserver{refusals: map[string][]string{}, ended: map[string][]proxy.SessionResult{}},
		badDials: &atomic.Int32{}, goodDials: &atomic.Int32{}, bad: t.Name() + "/bad", good: t.Name() + "/good"}
	route := func(name string, d *chain.Dialer, trust string, dials *atomic.Int32) (proxy.Route, int) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return proxy.Route{
			Name: name, Listeners: []net.Listener{l}, UpstreamAddr: d.Addr(), Trust: trust,
			Dial:      countedDial(d, dials),
			TLSConfig: tcfg, StartupTimeout: 20 * time.Second,
		}, l.Addr().(*net.TCPAddr).Port
	}
	badRoute, badPort := route(ap.bad, bad, trust, ap.badDials)
	for _, f := range tweak {
		f(&badRoute)
	}
	goodRoute, goodPort := route(ap.good, good, "the roots in --ca-file "+rootFile, ap.goodDials)
	ap.badPort, ap.goodPort = badPort, goodPort
	ap.srv, err = proxy.New(proxy.Config{Routes: []proxy.Route{badRoute, goodRoute}, Logger: testLogger(), Observer: ap.obs})
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go ap.srv.Serve(context.Background())
	t.Cleanup(func() { ap.srv.Close() })
	return ap
}

// queryGood runs a real query through the good route, and fails the test
// unless it works. (The md5 user: pgx asks for SCRAM channel binding on
// TLS, which a TLS-terminating hop cannot pass, and the proxy says so.)
func (ap *attackProxy) queryGood(t *testing.T, sslmode, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s connect_timeout=20",
		ap.goodPort, harness.MD5User, harness.MD5Password, sslmode)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("good route (sslmode=%s) after %s: %v", sslmode, what, err)
	}
	defer conn.Close(context.Background())
	var got string
	var ssl bool
	if err := conn.QueryRow(ctx, "select $1::text, ssl from pg_stat_ssl where pid = pg_backend_pid()", what).Scan(&got, &ssl); err != nil || got != what {
		t.Fatalf("good route (sslmode=%s) after %s: got %q, %v", sslmode, what, got, err)
	}
	if !ssl {
		t.Fatalf("good route (sslmode=%s): the server sees a session without TLS", sslmode)
	}
}

// waitRefusals waits until the bad route has counted n refusals, and checks
// each has cause reason and that the good route refused nothing.
func (ap *attackProxy) waitRefusals(t *testing.T, n int, reason string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := ap.obs.snapshot(ap.bad)
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("the bad route counted %d refusals %q, want %d", len(got), got, n)
			}
			for _, c := range got {
				if c != reason {
					t.Fatalf("the bad route's refusals are %q, want each %q", got, reason)
				}
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if refused, ended := ap.obs.snapshot(ap.good); len(refused) != 0 {
		t.Fatalf("the good route refused %q (sessions %q)", refused, ended)
	}
}

// answerStripS is a middlebox in front of the real server: it forwards the
// SSLRequest, reads the server's 'S' and tells the proxy 'N' instead, as if
// the server had TLS off. sawS records that the real server did offer TLS.
func answerStripS(sawS *atomic.Int32) testpki.FakeAnswer {
	return func(c net.Conn, _ *testpki.FakeUpstream) net.Conn {
		up, err := net.DialTimeout("tcp", cluster.Addr(), 5*time.Second)
		if err != nil {
			return nil
		}
		defer up.Close()
		_ = up.SetDeadline(time.Now().Add(5 * time.Second))
		req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		var answer [1]byte
		if _, err := up.Write(req); err != nil {
			return nil
		}
		if _, err := io.ReadFull(up, answer[:]); err != nil || answer[0] != 'S' {
			return nil
		}
		sawS.Add(1)
		if _, err := c.Write([]byte{'N'}); err != nil {
			return nil
		}
		return c
	}
}

// answerSThenPlaintext answers 'S', reads the proxy's first TLS record (its
// ClientHello) and answers it in plaintext with msgs, as a middlebox that
// pretends TLS was set up does. hellos counts the ClientHellos seen.
func answerSThenPlaintext(hellos *atomic.Int32, msgs ...pgproto3.BackendMessage) testpki.FakeAnswer {
	return func(c net.Conn, _ *testpki.FakeUpstream) net.Conn {
		if _, err := c.Write([]byte{'S'}); err != nil {
			return nil
		}
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil || hdr[0] != 0x16 {
			return nil
		}
		if _, err := io.CopyN(io.Discard, c, int64(hdr[3])<<8|int64(hdr[4])); err != nil {
			return nil
		}
		hellos.Add(1)
		var out []byte
		for _, m := range msgs {
			var err error
			if out, err = m.Encode(out); err != nil {
				return nil
			}
		}
		if _, err := c.Write(out); err != nil {
			return nil
		}
		return c
	}
}

// switchableUpstream first relays to the real server (so the route pins the
// real chain and serves), then, after flip, presents a chain to another
// root with a valid certificate for the right name.
type switchableUpstream struct {
	flipped atomic.Bool
	relayed atomic.Int32 // connections relayed to the real server
	tlsOnly testpki.FakeAnswer
	hellos  atomic.Int32 // connections answered after the flip
}

func (s *switchableUpstream) answer(c net.Conn, f *testpki.FakeUpstream) net.Conn {
	if s.flipped.Load() {
		s.hellos.Add(1)
		return s.tlsOnly(c, f)
	}
	up, err := net.DialTimeout("tcp", cluster.Addr(), 5*time.Second)
	if err != nil {
		return nil
	}
	defer up.Close()
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := up.Write(req); err != nil {
		return nil
	}
	s.relayed.Add(1)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(c, up)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(up, c)
	if tc, ok := up.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	return nil
}

// issueCert makes a certificate from tmpl signed by parent (self-signed
// when parent is nil), for attack rows that need what testpki's PKI
// does not make: name constraints, or a hostile subject.
func issueCert(t *testing.T, parent *testpki.Cert, tmpl *x509.Certificate) *testpki.Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.BasicConstraintsValid = true
	if tmpl.IsCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testpki.Cert{Cert: c, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// rootsTrust sets a route's trust to roots, with AIA completion (which a
// --ca-file route's dialer does not do), as a pinned route's would.
func rootsTrust(roots ...*testpki.Cert) func(t *testing.T, d *chain.Dialer) string {
	return func(t *testing.T, d *chain.Dialer) string {
		d.Roots = nil
		d.Trust = fixedTrust{roots: testpki.Pool(roots...)}
		return "the test's roots"
	}
}

// fixedTrust is a TrustSource of fixed roots that completes chains through
// AIA with the proxy's default AIA policy.
type fixedTrust struct{ roots *x509.CertPool }

func (f fixedTrust) Verifier(context.Context) (*chain.Verifier, error) {
	return &chain.Verifier{Roots: f.roots, AIA: &chain.Completer{}}, nil
}

// countingHTTP is an HTTP server that counts the requests reaching it.
type countingHTTP struct {
	*httptest.Server
	hits atomic.Int32
}

func startCountingHTTP(t *testing.T) *countingHTTP {
	t.Helper()
	c := &countingHTTP{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		time.Sleep(300 * time.Millisecond) // a slow internal endpoint, as a timing oracle would probe
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(c.Close)
	return c
}
