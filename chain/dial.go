package chain

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// sslRequestCode is the magic number of PostgreSQL's SSLRequest.
const sslRequestCode = 80877103

// DefaultConnectTimeout bounds the TCP connect, the SSLRequest exchange and the
// TLS handshake together when Dialer.ConnectTimeout is zero.
const DefaultConnectTimeout = 10 * time.Second

// ContextDialer opens network connections; *net.Dialer is one. Tests inject
// their own.
type ContextDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Dialer opens connections to one upstream PostgreSQL server over TLS that has
// passed verify-full. Every upstream connection of the proxy (sessions and
// cancel requests) goes through Dial.
type Dialer struct {
	// Host is the upstream host as configured: a DNS name or an IP literal.
	Host string
	// Port is the upstream TCP port.
	Port int
	// ServerName is the name verified against the certificate and sent as
	// SNI; empty means Host.
	ServerName string
	// Roots are the trust anchors for this upstream, when they are fixed
	// (--ca-file). Trust, when set, takes precedence.
	Roots *x509.CertPool
	// Trust supplies the verifier for each connection (pins that may be
	// fetched, reloaded or replaced while the proxy runs).
	Trust TrustSource
	// ClientCert, when set, is presented to the server.
	ClientCert *tls.Certificate
	// ConnectTimeout bounds connect + SSLRequest + handshake; zero means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Net opens the TCP connection; nil means a plain *net.Dialer.
	Net ContextDialer
	// OnCommonName is called when the host name matched the certificate's CN
	// only (libpq's fallback for certificates without a SAN of the host's type).
	OnCommonName func(cert *x509.Certificate)
	// Negotiation is how TLS starts: NegotiatePostgres (an SSLRequest first,
	// every PostgreSQL version; the default) or NegotiateDirect (PostgreSQL
	// 17's direct TLS: the handshake starts at once and the server must
	// select the ALPN protocol "postgresql").
	Negotiation Negotiation
	// OnVerified, when set, is called after each successful Dial with the
	// verified path, leaf first and trust anchor last (for expiry metrics).
	OnVerified func(path []*x509.Certificate)
}

// Negotiation says how a connection to the upstream starts TLS; the names are
// those of libpq's sslnegotiation.
type Negotiation string

const (
	// NegotiatePostgres sends an SSLRequest and starts TLS after 'S'.
	NegotiatePostgres Negotiation = "postgres"
	// NegotiateDirect starts the TLS handshake at once (PostgreSQL 17+),
	// with ALPN "postgresql" required in the server's answer.
	NegotiateDirect Negotiation = "direct"
)

// ALPNProtocol is PostgreSQL's ALPN protocol name.
const ALPNProtocol = "postgresql"

// ParseNegotiation validates a negotiation name; "" means postgres.
func ParseNegotiation(s string) (Negotiation, error) {
	switch Negotiation(s) {
	case "", NegotiatePostgres:
		return NegotiatePostgres, nil
	case NegotiateDirect:
		return NegotiateDirect, nil
	}
	return "", fmt.Errorf("negotiation must be postgres (SSLRequest, any server) or direct (PostgreSQL 17+ direct TLS), not %q", s)
}

func (d *Dialer) direct() bool { return d.Negotiation == NegotiateDirect }

// Addr returns host:port.
func (d *Dialer) Addr() string { return net.JoinHostPort(d.Host, strconv.Itoa(d.Port)) }

// VerifyName returns the name checked against the certificate.
func (d *Dialer) VerifyName() string {
	if d.ServerName != "" {
		return d.ServerName
	}
	return d.Host
}

// TrustSource supplies the Verifier for the next connection.
type TrustSource interface {
	// Verifier returns the current verifier, or why the upstream cannot be
	// trusted now.
	Verifier(ctx context.Context) (*Verifier, error)
}

// verifier returns the verifier for the next connection.
func (d *Dialer) verifier(ctx context.Context) (*Verifier, error) {
	if d.Trust != nil {
		v, err := d.Trust.Verifier(ctx)
		if err != nil {
			return nil, &DialError{Addr: d.Addr(), Step: StepTrust, Err: err}
		}
		v.ServerName = d.VerifyName()
		if v.OnCommonName == nil {
			v.OnCommonName = d.OnCommonName
		}
		return v, nil
	}
	if d.Roots == nil {
		return nil, &DialError{Addr: d.Addr(), Step: StepVerify, Err: &VerifyError{Kind: KindUnknownAuthority, Err: errors.New("no trust anchors configured for this upstream")}}
	}
	return &Verifier{Roots: d.Roots, ServerName: d.VerifyName(), OnCommonName: d.OnCommonName}, nil
}

// TLSConfig returns the client TLS configuration for this upstream: TLS 1.2 or
// later, SNI unless the name is an IP literal, and verify-full done by v in
// VerifyConnection. Go's own verification is replaced (not skipped) because
// libpq's host-name rules differ from Go's.
func (d *Dialer) TLSConfig(v *Verifier) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// crypto/tls omits SNI for IP literals by itself.
		ServerName: d.VerifyName(),
		// The chain and the host name are checked by v.VerifyConnection,
		// which runs on every handshake, including resumed ones.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection
		VerifyConnection:   v.VerifyConnection,
	}
	if d.ClientCert != nil {
		cfg.Certificates = []tls.Certificate{*d.ClientCert}
	}
	d.setALPN(cfg)
	return cfg
}

// setALPN offers "postgresql" as libpq 17 does. A server that predates ALPN
// ignores it; with direct negotiation the server must select it (checked
// after the handshake by checkALPN).
func (d *Dialer) setALPN(cfg *tls.Config) { cfg.NextProtos = []string{ALPNProtocol} }

// checkALPN enforces the server's ALPN answer on direct connections, as a
// PostgreSQL 17 server enforces the client's: without it, the peer is not
// known to speak PostgreSQL inside TLS.
func (d *Dialer) checkALPN(cs tls.ConnectionState) error {
	if !d.direct() || cs.NegotiatedProtocol == ALPNProtocol {
		return nil
	}
	return &DialError{Addr: d.Addr(), Step: StepHandshake, Refused: true,
		Err: fmt.Errorf("direct TLS: the server did not select the ALPN protocol %q (it selected %q): it is not a PostgreSQL 17+ server accepting direct TLS; use negotiation postgres", ALPNProtocol, cs.NegotiatedProtocol)}
}

// Dial connects to the upstream, asks for TLS with an SSLRequest and returns
// a connection whose server passed verify-full. Nothing but the SSLRequest is
// sent before verification succeeds.
func (d *Dialer) Dial(ctx context.Context) (*tls.Conn, error) {
	conn, _, _, err := d.dial(ctx)
	return conn, err
}

// dial is Dial, returning also the verifier the connection was checked
// with (set once it was had, even when the dial then failed) and the
// verified path, leaf first, anchor last.
func (d *Dialer) dial(ctx context.Context) (*tls.Conn, *Verifier, []*x509.Certificate, error) {
	v, err := d.verifier(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	timeout := d.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	raw, err := d.startTLS(ctx)
	if err != nil {
		return nil, v, nil, err
	}
	cfg := d.TLSConfig(v)
	var verified []*x509.Certificate
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// The dial's context bounds the AIA fetches the check may need.
		path, err := v.VerifyContext(ctx, cs.PeerCertificates)
		verified = path
		return err
	}
	conn := tls.Client(rawsock.Wrap(raw), cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, v, nil, d.handshakeError(err)
	}
	if err := d.checkALPN(conn.ConnectionState()); err != nil {
		raw.Close()
		return nil, v, nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	// Only now has the server proved it holds the key of the certificate
	// it presented: what observes verified paths learns of it here.
	if o, ok := d.Trust.(VerifiedObserver); ok && len(verified) > 0 {
		o.Verified(verified)
	}
	if d.OnVerified != nil && len(verified) > 0 {
		d.OnVerified(verified)
	}
	return conn, v, verified, nil
}

// startTLS opens the TCP connection and performs the SSLRequest exchange
// (nothing, with direct negotiation), returning the raw connection on which
// the TLS handshake must start.
func (d *Dialer) startTLS(ctx context.Context) (net.Conn, error) {
	nd := d.Net
	if nd == nil {
		nd = &net.Dialer{KeepAlive: 30 * time.Second}
	}
	raw, err := nd.DialContext(ctx, "tcp", d.Addr())
	if err != nil {
		return nil, &DialError{Addr: d.Addr(), Step: StepConnect, Err: err}
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	if d.direct() {
		return raw, nil
	}
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := raw.Write(req[:]); err != nil {
		raw.Close()
		return nil, &DialError{Addr: d.Addr(), Step: StepSSLRequest, Err: fmt.Errorf("sending SSLRequest: %w", err)}
	}
	// Exactly one byte, read straight from the socket: anything the server
	// (or a man in the middle) sent after it must reach the TLS layer, where
	// it fails the handshake, never a buffer that is read later as if it had
	// been protected (CVE-2021-23222).
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil {
		raw.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("server closed the connection without answering")
		}
		return nil, &DialError{Addr: d.Addr(), Step: StepSSLRequest, Err: fmt.Errorf("reading SSLRequest answer: %w", err)}
	}
	switch answer[0] {
	case 'S':
		return raw, nil
	case 'N':
		raw.Close()
		return nil, &DialError{Addr: d.Addr(), Step: StepSSLRequest, Refused: true,
			Err: errors.New("server refused TLS (answered 'N' to SSLRequest): the server has ssl=off, or something on the path stripped TLS")}
	case 'E':
		raw.Close()
		// The server is not authenticated yet: its text is not shown.
		return nil, &DialError{Addr: d.Addr(), Step: StepSSLRequest, Refused: true,
			Err: errors.New("server answered SSLRequest with an error message (not shown: the server is not authenticated); it may be very old or not PostgreSQL")}
	default:
		raw.Close()
		return nil, &DialError{Addr: d.Addr(), Step: StepSSLRequest, Refused: true,
			Err: fmt.Errorf("unexpected answer 0x%02x to SSLRequest: not a PostgreSQL server, or the path is tampered with", answer[0])}
	}
}

// directHint is the fix for a server that does not accept direct TLS.
const directHint = "the server does not accept PostgreSQL 17 direct TLS: set negotiation: postgres for this route (--negotiation postgres)"

// ClientCertHint is the fix when the server rejects the proxy's client
// certificate, or wants one and got none.
const ClientCertHint = "the server asks for a client certificate it accepts (pg_hba cert or clientcert=verify-full): set upstream_cert and upstream_key for this route (--upstream-cert/--upstream-key), or renew the one configured"

func (d *Dialer) handshakeError(err error) error {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return &DialError{Addr: d.Addr(), Step: StepVerify, Err: ve}
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		if d.direct() {
			return &DialError{Addr: d.Addr(), Step: StepHandshake, Refused: true, Hint: directHint,
				Err: errors.New("direct TLS: the server answered the TLS ClientHello in plaintext: it does not speak direct TLS")}
		}
		return &DialError{Addr: d.Addr(), Step: StepHandshake, Injected: true,
			Err: errors.New("server sent unencrypted data where the TLS handshake should start (possible man-in-the-middle injecting data after 'S')")}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return &DialError{Addr: d.Addr(), Step: StepHandshake, Err: errors.New("TLS handshake timed out")}
	}
	if d.direct() && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		// A server before PostgreSQL 17 reads the ClientHello as a startup
		// packet of absurd length and hangs up without a word.
		return &DialError{Addr: d.Addr(), Step: StepHandshake, Refused: true, Hint: directHint,
			Err: errors.New("direct TLS: the server closed the connection at the TLS ClientHello: it does not accept direct TLS (PostgreSQL 17 or later is needed); use negotiation postgres")}
	}
	alert, isAlert := TLSAlert(err)
	if d.direct() && alert == "no application protocol" {
		return &DialError{Addr: d.Addr(), Step: StepHandshake, Refused: true, Hint: directHint,
			Err: fmt.Errorf("direct TLS: the server refused the ALPN protocol %q; use negotiation postgres", ALPNProtocol)}
	}
	if alert == "protocol version not supported" || strings.Contains(err.Error(), "server selected unsupported protocol version") {
		return &DialError{Addr: d.Addr(), Step: StepHandshake,
			Err: fmt.Errorf("the server offers no TLS version the proxy accepts (TLS 1.2 or later required): %w", err)}
	}
	if isAlert && ClientCertAlert(alert) {
		return &DialError{Addr: d.Addr(), Step: StepHandshake, Alert: alert,
			Err: fmt.Errorf("the server rejected the TLS handshake (alert %q) after the proxy verified it", alert)}
	}
	return &DialError{Addr: d.Addr(), Step: StepHandshake, Err: fmt.Errorf("TLS handshake failed: %w", err)}
}

// TLSAlert returns the text of a TLS alert the peer sent, which crypto/tls
// reports only as "remote error: tls: <text>".
func TLSAlert(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	const prefix = "remote error: tls: "
	msg := err.Error()
	i := strings.Index(msg, prefix)
	if i < 0 {
		return "", false
	}
	return msg[i+len(prefix):], true
}

// AlertAfterHandshake returns the failure of a verified connection to addr
// whose server ended the TLS session with an alert (err, from a read or a
// write after the handshake), or nil when err is no TLS alert. With TLS 1.3
// a server refuses the client certificate, or its absence, only then.
func AlertAfterHandshake(addr string, err error) *DialError {
	alert, ok := TLSAlert(err)
	if !ok {
		return nil
	}
	return &DialError{Addr: addr, Step: StepAfterHandshake, Alert: alert,
		Err: fmt.Errorf("the server ended the TLS session with the alert %q", alert)}
}

// ClientCertAlert reports alerts by which a server refuses the client's
// certificate (or its absence).
func ClientCertAlert(alert string) bool {
	switch alert {
	case "certificate required", "bad certificate", "unknown certificate authority", "expired certificate",
		"revoked certificate", "unsupported certificate", "unknown certificate", "access denied":
		return true
	}
	return false
}

// Step names the phase of an upstream connection.
type Step string

const (
	// StepConnect is the TCP connect.
	StepConnect Step = "connecting"
	// StepSSLRequest is the SSLRequest exchange.
	StepSSLRequest Step = "requesting TLS"
	// StepHandshake is the TLS handshake.
	StepHandshake Step = "TLS handshake"
	// StepVerify is the verify-full check of the server's certificate.
	StepVerify Step = "verifying the server certificate"
	// StepTrust is finding what to trust (the pin) before connecting.
	StepTrust Step = "deciding what to trust"
	// StepAfterHandshake is the verified connection right after its
	// handshake, where a TLS 1.3 server refuses the client certificate.
	StepAfterHandshake Step = "after the TLS handshake"
)

// DialError is a failed upstream connection.
type DialError struct {
	// Addr is the upstream host:port.
	Addr string
	// Step is the phase that failed.
	Step Step
	// Refused is set when the server (or the path) declined TLS.
	Refused bool
	// Injected is set when plaintext arrived where TLS should start.
	Injected bool
	// Alert is the TLS alert the server ended the handshake or the
	// session with, when that is what happened.
	Alert string
	// Err is the cause.
	Err error
	// Hint, when set, is what the user should do about it.
	Hint string
}

func (e *DialError) Error() string {
	return fmt.Sprintf("upstream %s: %s: %v", e.Addr, e.Step, e.Err)
}

// Unwrap returns the cause.
func (e *DialError) Unwrap() error { return e.Err }
