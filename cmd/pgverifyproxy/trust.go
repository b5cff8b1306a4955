package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/pflag"

	// Mozilla's roots, used only where the host has no trust store of its
	// own (a scratch container); SSL_CERT_FILE/SSL_CERT_DIR still win.
	_ "golang.org/x/crypto/x509roots/fallback"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// trustConfig is what every command needs to reach and trust one upstream.
type trustConfig struct {
	Upstream       string        `mapstructure:"upstream"`
	ServerName     string        `mapstructure:"server_name"`
	CAFile         string        `mapstructure:"ca_file"`
	PinDir         string        `mapstructure:"pin_dir"`
	Trust          string        `mapstructure:"trust"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	UpstreamCert   string        `mapstructure:"upstream_cert"`
	UpstreamKey    string        `mapstructure:"upstream_key"`
	Negotiation    string        `mapstructure:"negotiation"`
	// AIAAllowPrivate: see runConfig.
	AIAAllowPrivate bool `mapstructure:"aia_allow_private"`
}

// trustOptions are the settings of trustConfig.
var trustOptions = pickOptions("upstream", "server_name", "ca_file", "pin_dir", "trust", "connect_timeout",
	"upstream_cert", "upstream_key", "negotiation", "aia_allow_private")

// loadTrustConfig reads the upstream settings of the chain commands: from
// flags, environment and file, or, with route, from that route of the file.
func loadTrustConfig(fs *pflag.FlagSet, configFile, route string) (trustConfig, error) {
	if route == "" {
		var tc trustConfig
		v, err := loadConfig(fs, configFile, trustOptions, &tc)
		if err != nil {
			return trustConfig{}, err
		}
		if tc.Upstream == "" && v.InConfig("routes") {
			return trustConfig{}, errors.New("the config file has routes: pick one with --route NAME")
		}
		return tc, nil
	}
	if configFile == "" {
		return trustConfig{}, errors.New("--route needs --config: routes are defined in the config file")
	}
	var rc runConfig
	v, err := loadConfig(fs, configFile, runOptions, &rc)
	if err != nil {
		return trustConfig{}, err
	}
	rc.setBy = sources(v, fs)
	markRouteKeys(v, rc.Routes)
	routes, err := rc.routes()
	if err != nil {
		return trustConfig{}, err
	}
	var names []string
	for _, r := range routes {
		if r.Name == route {
			return trustConfig{Upstream: r.Upstream, ServerName: r.ServerName, CAFile: r.CAFile, PinDir: rc.PinDir,
				Trust: r.Trust, ConnectTimeout: rc.ConnectTimeout, UpstreamCert: r.UpstreamCert, UpstreamKey: r.UpstreamKey,
				Negotiation: r.Negotiation, AIAAllowPrivate: rc.AIAAllowPrivate}, nil
		}
		names = append(names, r.Name)
	}
	return trustConfig{}, fmt.Errorf("no route named %q in %s (routes: %s)", route, configFile, strings.Join(names, ", "))
}

// upstreamTrust is a dialer and what it trusts.
type upstreamTrust struct {
	spec    upstreamSpec
	dialer  *chain.Dialer
	caRoots *x509.CertPool   // set with --ca-file
	pins    *chain.PinTrust  // set without --ca-file, with a pinning policy
	live    *chain.LiveTrust // set with trust: live (no pin)
	store   *chain.PinStore
	system  *x509.CertPool
	aia     *chain.Completer
	policy  chain.Policy
	// describe names the trust anchors in hints.
	describe string
	// repin is the command that replaces the pin.
	repin string
}

func buildTrust(tc trustConfig, log *slog.Logger) (*upstreamTrust, error) {
	if tc.Upstream == "" {
		return nil, fmt.Errorf("no upstream: pass --upstream HOST:PORT (or set upstream in the config file, or PGVERIFYPROXY_UPSTREAM)")
	}
	spec, err := parseUpstream(tc.Upstream)
	if err != nil {
		return nil, err
	}
	if len(spec.Ignored) > 0 && log != nil {
		log.Info("upstream URI: using only its host and port; each client sends its own user, database and password",
			"host", spec.Host, "port", spec.Port, "ignored", strings.Join(spec.Ignored, ","))
	}
	policy, err := chain.ParsePolicy(tc.Trust)
	if err != nil {
		return nil, err
	}
	negotiation, err := chain.ParseNegotiation(tc.Negotiation)
	if err != nil {
		return nil, err
	}
	ut := &upstreamTrust{spec: spec, policy: policy}
	ut.dialer = &chain.Dialer{Host: spec.Host, Port: spec.Port, ServerName: tc.ServerName, ConnectTimeout: tc.ConnectTimeout,
		Negotiation: negotiation}
	if tc.UpstreamCert != "" || tc.UpstreamKey != "" {
		if ut.dialer.ClientCert, err = chain.LoadClientCertificate(tc.UpstreamCert, tc.UpstreamKey); err != nil {
			return nil, err
		}
	}
	if log != nil {
		ut.dialer.OnCommonName = func(c *x509.Certificate) {
			log.Warn("upstream certificate matched by its common name only (it has no subjectAltName of the host's type); libpq accepts this too, but ask the server's operator for a certificate with a SAN",
				"cn", c.Subject.CommonName)
		}
		ut.aia = &chain.Completer{AllowPrivate: tc.AIAAllowPrivate, Logf: func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...)) }}
	} else {
		ut.aia = &chain.Completer{AllowPrivate: tc.AIAAllowPrivate}
	}
	ut.repin = "pgverifyproxy chain fetch --upstream " + spec.addr()
	if tc.ServerName != "" {
		ut.repin += " --server-name " + tc.ServerName
	}
	if tc.PinDir != "" {
		ut.repin += " --pin-dir " + tc.PinDir
	}
	if negotiation == chain.NegotiateDirect {
		ut.repin += " --negotiation direct"
	}
	ut.repin += " --repin"
	if tc.CAFile != "" {
		roots, anchors, err := chain.LoadCAFile(tc.CAFile)
		if err != nil {
			return nil, err
		}
		ut.caRoots = roots
		ut.dialer.Roots = roots
		ut.describe = "the roots in --ca-file " + tc.CAFile
		for _, a := range anchors {
			if log != nil {
				log.Debug("trust anchor", "subject", a.Subject.String(), "spki_sha256", chain.SPKIHash(a), "not_after", a.NotAfter.UTC().Format(time.RFC3339))
			}
		}
		return ut, nil
	}
	if ut.system, err = chain.SystemRoots(); err != nil {
		return nil, err
	}
	if policy == chain.PolicyLive {
		ut.live = &chain.LiveTrust{System: ut.system, AIA: ut.aia}
		if log != nil {
			ut.live.OnRootChange = func(from, to *x509.Certificate) {
				if from == nil {
					log.Info("trust live: the upstream's chain leads to this root of the system trust store",
						"upstream", spec.addr(), "root", to.Subject.String(), "spki_sha256", chain.SPKIHash(to))
					return
				}
				log.Warn("the upstream's root CA changed (trust: live: accepted, the new chain leads to the system trust store)",
					"upstream", spec.addr(), "from", from.Subject.String(), "from_spki_sha256", chain.SPKIHash(from),
					"to", to.Subject.String(), "to_spki_sha256", chain.SPKIHash(to))
			}
		}
		ut.dialer.Trust = ut.live
		ut.describe = "the system trust store (trust: live)"
		return ut, nil
	}
	dir := tc.PinDir
	if dir == "" {
		if dir, err = chain.DefaultPinDir(); err != nil {
			return nil, err
		}
	}
	ut.store = &chain.PinStore{Dir: dir}
	ut.pins = &chain.PinTrust{Store: ut.store, Dialer: ut.dialer, Policy: policy, System: ut.system, AIA: ut.aia, Repin: ut.repin}
	if log != nil {
		// Set here, before any session can use the route: a client that
		// arrives before the start-up check may be the one that pins.
		ut.pins.OnPinned = func(p *chain.Pin, path string) {
			log.Info("upstream pinned", "upstream", spec.addr(), "policy", p.Policy, "anchor", p.Anchors[0].Subject.String(),
				"spki_sha256", strings.Join(p.Fingerprints(), ","), "pin_file", path)
		}
	}
	ut.dialer.Trust = ut.pins
	ut.describe = "the pinned anchor in " + ut.store.Path(spec.Host, spec.Port, tc.ServerName)
	return ut, nil
}

// repinCommand is the command that replaces the upstream's pin, or "" when
// the upstream is trusted through a CA file.
func (ut *upstreamTrust) repinCommand() string {
	if ut.pins == nil {
		return ""
	}
	return ut.repin
}

// warnExpiry logs certificates that expire within warn.
func warnExpiry(log *slog.Logger, what string, c *x509.Certificate, warn time.Duration) {
	left := time.Until(c.NotAfter)
	if left < warn {
		log.Warn(what+" expires soon", "subject", c.Subject.String(), "not_after", c.NotAfter.UTC().Format(time.RFC3339),
			"days_left", int(left.Hours()/24))
	}
}

// prepareTrust makes sure a pinned route has its pin at start-up, fetching
// it the first time, and logs the outcome. A route that cannot be trusted
// keeps refusing clients with the reason; it is retried on later connections.
func prepareTrust(ctx context.Context, ut *upstreamTrust, log *slog.Logger, warn time.Duration) {
	if ut.pins == nil {
		return
	}
	p, path, err := ut.pins.Current(ctx)
	if err != nil {
		log.Error("refusing to relay to this upstream until it can be trusted (clients get this reason; retried on later connections)",
			"upstream", ut.spec.addr(), "error", err.Error())
		return
	}
	log.Info("using pin", "upstream", ut.spec.addr(), "pin_file", path, "policy", p.Policy, "spki_sha256", strings.Join(p.Fingerprints(), ","),
		"first_seen", p.FirstSeen.UTC().Format(time.RFC3339))
	if p.Policy != string(ut.policy) {
		// Routes to the same upstream share its pin, whatever their trust.
		log.Warn("the pin in use was made under another trust policy; this route's policy applies only to a first pin (re-pin with chain fetch --repin to apply it)",
			"upstream", ut.spec.addr(), "pin_policy", p.Policy, "route_policy", string(ut.policy), "pin_file", path)
	}
	for _, a := range p.Anchors {
		warnExpiry(log, "pinned anchor", a, warn)
	}
}
