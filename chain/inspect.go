package chain

import (
	"context"
	"crypto/x509"
	"errors"
	"time"
)

// AlertWait is how long Inspect listens after the handshake for a TLS
// alert: with TLS 1.3 a server refuses the client certificate (or its
// absence) only after the client has finished the handshake. A PostgreSQL
// server waiting for a startup message sends nothing.
const AlertWait = 500 * time.Millisecond

// Inspection is what Inspect learned about an upstream.
type Inspection struct {
	// Handshake is the TLS version, cipher suite and time of the handshake
	// and the certificates presented: of the verified connection, or, when
	// Captured, of a capture-only handshake made after verify-full failed.
	Handshake *Fetched
	// Captured is set when Handshake comes from a capture-only handshake:
	// verify-full failed, and Path is nil.
	Captured bool
	// ALPN is the protocol the server selected, if any.
	ALPN string
	// Path is the verified path, leaf first, anchor last.
	Path []*x509.Certificate
	// ThroughAIA are the certificates of Path between leaf and anchor that
	// the server did not present and the trust does not keep as path hints
	// (a pin's intermediates): those were fetched through AIA.
	ThroughAIA []*x509.Certificate
}

// InspectOptions adjust Inspect.
type InspectOptions struct {
	// Capture, when verify-full fails, makes a second handshake that only
	// captures what the server presents (as chain fetch does: nothing is
	// sent but the SSLRequest and the handshake), so that the refused chain
	// can be shown.
	Capture bool
}

// Inspect reaches the upstream exactly as the proxy does (d.Dial: the
// SSLRequest or direct TLS, then verify-full), listens AlertWait for a
// TLS alert, closes and says what it found. It sends no startup message,
// user name or password. It serves check, run's start-up check and the
// chain commands.
//
// The error is Dial's, or, when the server ended the verified session
// with an alert right after the handshake, a *DialError at
// StepAfterHandshake (see AlertAfterHandshake) returned with the complete
// Inspection. Explain says what to do about either. The Inspection is nil
// when nothing was learned, or, with o.Capture, holds the captured chain
// when verify-full failed.
func Inspect(ctx context.Context, d *Dialer, o InspectOptions) (*Inspection, error) {
	start := time.Now()
	conn, v, path, err := d.dial(ctx)
	if err != nil {
		var de *DialError
		if !o.Capture || !errors.As(err, &de) || de.Step != StepVerify {
			return nil, err
		}
		f, ferr := Fetch(ctx, d)
		if ferr != nil {
			return nil, err
		}
		return &Inspection{Handshake: f, Captured: true}, err
	}
	defer conn.Close()
	rtt := time.Since(start)
	_ = conn.SetReadDeadline(time.Now().Add(AlertWait))
	_, readErr := conn.Read(make([]byte, 1))
	cs := conn.ConnectionState()
	in := &Inspection{
		Handshake: &Fetched{Presented: cs.PeerCertificates, TLSVersion: cs.Version, CipherSuite: cs.CipherSuite, RTT: rtt},
		ALPN:      cs.NegotiatedProtocol,
		Path:      path,
	}
	if len(path) > 2 {
		known := append(append([]*x509.Certificate{}, cs.PeerCertificates...), v.Intermediates...)
		for _, c := range path[1 : len(path)-1] {
			if !containsCert(known, c) {
				in.ThroughAIA = append(in.ThroughAIA, c)
			}
		}
	}
	if de := AlertAfterHandshake(d.Addr(), readErr); de != nil {
		return in, de
	}
	return in, nil
}
