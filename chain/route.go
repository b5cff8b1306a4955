package chain

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"time"
)

// RouteConfig is what a route says about reaching and trusting its
// upstream, as plain values: the command line fills it from flags,
// variables and the config file.
type RouteConfig struct {
	// Host, Port and ServerName: see Dialer.
	Host       string
	Port       int
	ServerName string
	// CAFile, when set, holds the only roots the upstream is verified
	// against; no pin is used.
	CAFile string
	// PinDir holds the pin files; "" means DefaultPinDir.
	PinDir string
	// Policy is how a first pin is chosen, or PolicyLive for no pin; ""
	// means PolicySystem. Unused with CAFile.
	Policy Policy
	// Negotiation, ConnectTimeout and Net: see Dialer.
	Negotiation    Negotiation
	ConnectTimeout time.Duration
	Net            ContextDialer
	// ClientCertFile and ClientKeyFile are the client certificate
	// presented to a server that asks for one: both or neither.
	ClientCertFile, ClientKeyFile string
	// AIAAllowPrivate: see Completer.AllowPrivate.
	AIAAllowPrivate bool
	// Repin is the command that replaces the upstream's pin, named in
	// messages and hints. The command line spells it, with its own flags.
	Repin string

	// Optional hooks, for logs and metrics.

	// OnCommonName: see Dialer.OnCommonName.
	OnCommonName func(cert *x509.Certificate)
	// OnVerified: see Dialer.OnVerified.
	OnVerified func(path []*x509.Certificate)
	// OnPinned: see PinTrust.OnPinned. It is set before the route serves:
	// the first client may be the one that pins.
	OnPinned func(p *Pin, path string)
	// OnRootChange: see LiveTrust.OnRootChange.
	OnRootChange func(from, to *x509.Certificate)
	// AIALogf: see Completer.Logf.
	AIALogf func(format string, args ...any)
}

// RouteTrust is one route's upstream and what it is verified against:
// the roots of a CA file, its pin (fetched under a policy on first use) or
// the system trust store at every connection (live). The proxy dials
// through it; check and the chain commands inspect it.
type RouteTrust struct {
	// Dialer reaches the upstream and verifies it against the route's
	// trust. Every session's connection goes through it.
	Dialer *Dialer
	// CAFile and CAAnchors are set for a route trusting a CA file.
	CAFile    string
	CAAnchors []*x509.Certificate
	// Pins and Store are set for a pinned route.
	Pins  *PinTrust
	Store *PinStore
	// Live is set for a route with PolicyLive.
	Live *LiveTrust
	// System is the system trust store; set unless the route trusts a CA
	// file.
	System *x509.CertPool
	// AIA completes chains, for fetch and verification alike.
	AIA *Completer
	// Policy is the route's policy for a first pin.
	Policy Policy
	// Describe names the trust anchors in hints, e.g. "the roots in
	// --ca-file /etc/pg/root.crt".
	Describe string
	// Repin is the command that replaces the upstream's pin (RouteConfig's).
	Repin string

	pinDir string
}

// NewRouteTrust builds a route's upstream trust: it reads the CA file or
// the system trust store and the client certificate, and chooses the pin
// store; it never dials (a first pin is fetched on first use).
func NewRouteTrust(c RouteConfig) (*RouteTrust, error) {
	policy := c.Policy
	if policy == "" {
		policy = PolicySystem
	}
	rt := &RouteTrust{Policy: policy, Repin: c.Repin, pinDir: c.PinDir,
		AIA: &Completer{AllowPrivate: c.AIAAllowPrivate, Logf: c.AIALogf}}
	d := &Dialer{Host: c.Host, Port: c.Port, ServerName: c.ServerName, ConnectTimeout: c.ConnectTimeout,
		Negotiation: c.Negotiation, Net: c.Net, OnCommonName: c.OnCommonName, OnVerified: c.OnVerified}
	rt.Dialer = d
	if c.ClientCertFile != "" || c.ClientKeyFile != "" {
		cert, err := LoadClientCertificate(c.ClientCertFile, c.ClientKeyFile)
		if err != nil {
			return nil, err
		}
		d.ClientCert = cert
	}
	if c.CAFile != "" {
		roots, anchors, err := LoadCAFile(c.CAFile)
		if err != nil {
			return nil, err
		}
		d.Roots = roots
		rt.CAFile, rt.CAAnchors = c.CAFile, anchors
		rt.Describe = "the roots in --ca-file " + c.CAFile
		return rt, nil
	}
	var err error
	if rt.System, err = SystemRoots(); err != nil {
		return nil, err
	}
	if policy == PolicyLive {
		rt.Live = &LiveTrust{System: rt.System, AIA: rt.AIA, OnRootChange: c.OnRootChange}
		d.Trust = rt.Live
		rt.Describe = "the system trust store (trust: live)"
		return rt, nil
	}
	if rt.Store, err = rt.PinStore(); err != nil {
		return nil, err
	}
	rt.Pins = &PinTrust{Store: rt.Store, Dialer: d, Policy: policy, System: rt.System, AIA: rt.AIA,
		Repin: c.Repin, OnPinned: c.OnPinned}
	d.Trust = rt.Pins
	rt.Describe = "the pinned anchor in " + rt.Store.Path(d.Host, d.Port, d.ServerName)
	return rt, nil
}

// Addr is the upstream's host:port.
func (rt *RouteTrust) Addr() string { return rt.Dialer.Addr() }

// HintContext is what the advice about this route's failures names: its
// anchors, and the repin command when it has a pin.
func (rt *RouteTrust) HintContext() HintContext {
	hc := HintContext{Trust: rt.Describe}
	if rt.Pins != nil {
		hc.Repin = rt.Repin
	}
	return hc
}

// Dial opens a connection to the upstream that passed verify-full, for
// proxy.Route.Dial.
func (rt *RouteTrust) Dial(ctx context.Context) (net.Conn, error) {
	c, err := rt.Dialer.Dial(ctx)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// PinStore is the route's pin store, or, for a route trusting a CA file
// (which `chain fetch` may still pin), the one in its pin directory.
func (rt *RouteTrust) PinStore() (*PinStore, error) {
	if rt.Store != nil {
		return rt.Store, nil
	}
	dir := rt.pinDir
	if dir == "" {
		var err error
		if dir, err = DefaultPinDir(); err != nil {
			return nil, err
		}
	}
	return &PinStore{Dir: dir}, nil
}

// SystemRoots is the system trust store, read now for a route trusting a
// CA file.
func (rt *RouteTrust) SystemRoots() (*x509.CertPool, error) {
	if rt.System != nil {
		return rt.System, nil
	}
	return SystemRoots()
}

// LoadPin reads the pinned route's pin as it is on disk, with its file:
// ErrNoPin when there is none, and any other failure as the proxy reports
// it, a DialError at StepTrust.
func (rt *RouteTrust) LoadPin() (*Pin, string, error) {
	d := rt.Dialer
	path := rt.Store.Path(d.Host, d.Port, d.ServerName)
	p, err := rt.Store.Load(d.Host, d.Port, d.ServerName)
	if err != nil && !errors.Is(err, ErrNoPin) {
		err = &DialError{Addr: d.Addr(), Step: StepTrust, Err: err}
	}
	return p, path, err
}

// ReadOnly returns a copy of the route's dialer that never fetches or
// writes a pin: it verifies against p (kept in file) when p is set, else
// against the route's CA file or live trust, else against the system trust
// store. Check and the chain commands inspect the upstream through it.
func (rt *RouteTrust) ReadOnly(p *Pin, file string) *Dialer {
	d := *rt.Dialer
	switch {
	case p != nil:
		d.Roots, d.Trust = nil, &fixedTrust{v: *p.Verifier(file, rt.AIA, rt.System, rt.Repin)}
	case rt.Pins != nil:
		d.Roots, d.Trust = nil, &fixedTrust{v: Verifier{Roots: rt.System, AIA: rt.AIA, System: rt.System}}
	}
	return &d
}

// fixedTrust answers every connection with the same verifier.
type fixedTrust struct{ v Verifier }

// Verifier implements TrustSource.
func (f *fixedTrust) Verifier(context.Context) (*Verifier, error) {
	v := f.v
	return &v, nil
}
