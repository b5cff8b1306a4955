package chain

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Fetched is what an upstream presented in one handshake.
type Fetched struct {
	// Presented are the certificates the server sent, leaf first.
	Presented []*x509.Certificate
	// TLSVersion and CipherSuite are those negotiated.
	TLSVersion, CipherSuite uint16
	// RTT is the time of connect + SSLRequest + handshake.
	RTT time.Duration
}

// Fetch performs the SSLRequest (unless negotiation is direct) and a TLS handshake with the upstream and
// captures the certificates it presents. It is the only handshake that does
// not verify as it goes: it sends nothing but the SSLRequest and the
// handshake, closes, and everything it returns is verified afterwards.
func Fetch(ctx context.Context, d *Dialer) (*Fetched, error) {
	timeout := d.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	raw, err := d.startTLS(ctx)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	var presented []*x509.Certificate
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: d.VerifyName(),
		// Capture only: the chain is verified by Decide or Verifier after
		// the connection is closed; no application data is ever sent.
		InsecureSkipVerify: true, //nolint:gosec // capture, verified afterwards
		VerifyConnection: func(cs tls.ConnectionState) error {
			presented = cs.PeerCertificates
			return nil
		},
	}
	d.setALPN(cfg)
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, d.handshakeError(err)
	}
	cs := conn.ConnectionState()
	if err := d.checkALPN(cs); err != nil {
		return nil, err
	}
	if len(presented) == 0 {
		return nil, &DialError{Addr: d.Addr(), Step: StepHandshake, Err: errors.New("the server presented no certificate")}
	}
	return &Fetched{Presented: presented, TLSVersion: cs.Version, CipherSuite: cs.CipherSuite, RTT: time.Since(start)}, nil
}

// String summarises the handshake.
func (f *Fetched) String() string {
	return fmt.Sprintf("%s, %s, %d certificate(s) presented, %s", tls.VersionName(f.TLSVersion), tls.CipherSuiteName(f.CipherSuite), len(f.Presented), f.RTT.Round(time.Millisecond))
}
