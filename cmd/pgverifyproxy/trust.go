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
	_, routes, err := loadRouteTrusts(fs, configFile, route)
	if err != nil {
		return trustConfig{}, err
	}
	return routes[0].tc, nil
}

// routeTrust is one route's upstream settings.
type routeTrust struct {
	name string
	tc   trustConfig
}

// loadRouteTrusts reads each route's upstream settings from flags,
// environment and the config file, as run reads them: every route, or, with
// route, only that one.
func loadRouteTrusts(fs *pflag.FlagSet, configFile, route string) (runConfig, []routeTrust, error) {
	if route != "" && configFile == "" {
		return runConfig{}, nil, errors.New("--route needs --config: routes are defined in the config file")
	}
	rc, err := loadRunConfig(fs, configFile)
	if err != nil {
		return runConfig{}, nil, err
	}
	routes, err := rc.routes()
	if err != nil {
		return runConfig{}, nil, err
	}
	var out []routeTrust
	var names []string
	for _, r := range routes {
		names = append(names, r.Name)
		if route == "" || r.Name == route {
			// A host list: each host on its own (its own name, its own
			// pin with tofu), as run dials them.
			hosts := []string{r.Upstream}
			if l, err := parseUpstreamList(r.Upstream); err == nil && len(l.Hosts) > 1 {
				hosts = hosts[:0]
				for _, h := range l.Hosts {
					hosts = append(hosts, h.addr())
				}
			}
			for _, h := range hosts {
				hr, name := r, r.Name
				hr.Upstream = h
				if len(hosts) > 1 {
					name += " host " + h
				}
				out = append(out, routeTrust{name: name, tc: rc.trustConfig(hr)})
			}
		}
	}
	if len(out) == 0 {
		return runConfig{}, nil, fmt.Errorf("no route named %q in %s (routes: %s)", route, configFile, strings.Join(names, ", "))
	}
	return rc, out, nil
}

// trustConfig is what one route needs to reach and trust its upstream: its
// own settings and the top-level ones that every route shares.
func (rc *runConfig) trustConfig(r routeConfig) trustConfig {
	return trustConfig{Upstream: r.Upstream, ServerName: r.ServerName, CAFile: r.CAFile, PinDir: rc.PinDir,
		Trust: r.Trust, ConnectTimeout: rc.ConnectTimeout, UpstreamCert: r.UpstreamCert, UpstreamKey: r.UpstreamKey,
		Negotiation: r.Negotiation, AIAAllowPrivate: rc.AIAAllowPrivate}
}

// buildTrust builds the upstream trust of tc (chain.NewRouteTrust). log,
// when set, gets its events (pins, changes of root, CN-only matches, AIA
// fetches); adjust, when set, changes the chain settings first.
func buildTrust(tc trustConfig, log *slog.Logger, adjust func(*chain.RouteConfig)) (*chain.RouteTrust, error) {
	if tc.Upstream == "" {
		return nil, fmt.Errorf("no upstream: pass --upstream HOST:PORT (or set upstream in the config file, or PGVERIFYPROXY_UPSTREAM)")
	}
	spec, err := parseUpstream(tc.Upstream)
	if err != nil {
		return nil, err
	}
	policy, err := chain.ParsePolicy(tc.Trust)
	if err != nil {
		return nil, err
	}
	negotiation, err := chain.ParseNegotiation(tc.Negotiation)
	if err != nil {
		return nil, err
	}
	c := chain.RouteConfig{Host: spec.Host, Port: spec.Port, ServerName: tc.ServerName, CAFile: tc.CAFile, PinDir: tc.PinDir,
		Policy: policy, Negotiation: negotiation, ConnectTimeout: tc.ConnectTimeout,
		ClientCertFile: tc.UpstreamCert, ClientKeyFile: tc.UpstreamKey, AIAAllowPrivate: tc.AIAAllowPrivate,
		Repin: repinCommand(spec, tc, negotiation)}
	if log != nil {
		if len(spec.Ignored) > 0 {
			log.Info("upstream URI: using only its host and port; each client sends its own user, database and password",
				"host", spec.Host, "port", spec.Port, "ignored", strings.Join(spec.Ignored, ","))
		}
		logEvents(&c, spec.addr(), log)
	}
	if adjust != nil {
		adjust(&c)
	}
	rt, err := chain.NewRouteTrust(c)
	if err != nil {
		return nil, err
	}
	if log != nil {
		for _, a := range rt.CAAnchors {
			log.Debug("trust anchor", "subject", a.Subject.String(), "spki_sha256", chain.SPKIHash(a), "not_after", a.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return rt, nil
}

// repinCommand is the command that replaces the upstream's pin, in the
// flags of this program's `chain fetch`. It is spelled here, next to the
// flags it names, and handed to chain, which names it in messages and
// hints.
func repinCommand(spec upstreamSpec, tc trustConfig, negotiation chain.Negotiation) string {
	repin := "pgverifyproxy chain fetch --upstream " + spec.addr()
	if tc.ServerName != "" {
		repin += " --server-name " + tc.ServerName
	}
	if tc.PinDir != "" {
		repin += " --pin-dir " + tc.PinDir
	}
	if negotiation == chain.NegotiateDirect {
		repin += " --negotiation direct"
	}
	return repin + " --repin"
}

// logEvents logs what happens to the upstream's trust.
func logEvents(c *chain.RouteConfig, upstream string, log *slog.Logger) {
	c.OnCommonName = func(cert *x509.Certificate) {
		log.Warn("upstream certificate matched by its common name only (it has no subjectAltName of the host's type); libpq accepts this too, but ask the server's operator for a certificate with a SAN",
			"cn", cert.Subject.CommonName)
	}
	c.AIALogf = func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...)) }
	c.OnRootChange = func(from, to *x509.Certificate) {
		if from == nil {
			log.Info("trust live: the upstream's chain leads to this root of the system trust store",
				"upstream", upstream, "root", to.Subject.String(), "spki_sha256", chain.SPKIHash(to))
			return
		}
		log.Warn("the upstream's root CA changed (trust: live: accepted, the new chain leads to the system trust store)",
			"upstream", upstream, "from", from.Subject.String(), "from_spki_sha256", chain.SPKIHash(from),
			"to", to.Subject.String(), "to_spki_sha256", chain.SPKIHash(to))
	}
	// Set before any session can use the route: a client that arrives
	// before the start-up check may be the one that pins.
	c.OnPinned = func(p *chain.Pin, path string) {
		log.Info("upstream pinned", "upstream", upstream, "policy", p.Policy, "anchor", p.Anchors[0].Subject.String(),
			"spki_sha256", strings.Join(p.Fingerprints(), ","), "pin_file", path)
	}
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
func prepareTrust(ctx context.Context, rt *chain.RouteTrust, log *slog.Logger, warn time.Duration) {
	if rt.Pins == nil {
		return
	}
	p, path, err := rt.Pins.Current(ctx)
	if err != nil {
		log.Error("refusing to relay to this upstream until it can be trusted (clients get this reason; retried on later connections)",
			"upstream", rt.Addr(), "error", err.Error())
		return
	}
	log.Info("using pin", "upstream", rt.Addr(), "pin_file", path, "policy", p.Policy, "spki_sha256", strings.Join(p.Fingerprints(), ","),
		"first_seen", p.FirstSeen.UTC().Format(time.RFC3339))
	if p.Policy != string(rt.Policy) {
		// Routes to the same upstream share its pin, whatever their trust.
		log.Warn("the pin in use was made under another trust policy; this route's policy applies only to a first pin (re-pin with chain fetch --repin to apply it)",
			"upstream", rt.Addr(), "pin_policy", p.Policy, "route_policy", string(rt.Policy), "pin_file", path)
	}
	for _, a := range p.Anchors {
		warnExpiry(log, "pinned anchor", a, warn)
	}
}
