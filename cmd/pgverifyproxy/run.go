package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

func newLogger(rc runConfig) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(rc.LogLevel)); err != nil {
		return nil, fmt.Errorf("log level must be debug, info, warn or error, not %q", rc.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	if rc.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}

// buildRoute turns the plain configuration into a proxy route and the
// upstream dialer behind it.
func buildRoute(rc runConfig, log *slog.Logger) (proxy.Route, *chain.Dialer, error) {
	spec, err := parseUpstream(rc.Upstream)
	if err != nil {
		return proxy.Route{}, nil, err
	}
	if len(spec.Ignored) > 0 {
		log.Info("upstream URI: using only its host and port; each client sends its own user, database and password",
			"host", spec.Host, "port", spec.Port, "ignored", strings.Join(spec.Ignored, ","))
	}
	roots, anchors, err := chain.LoadCAFile(rc.CAFile)
	if err != nil {
		return proxy.Route{}, nil, err
	}
	for _, a := range anchors {
		log.Debug("trust anchor", "subject", a.Subject.String(), "spki_sha256", chain.SPKIHash(a), "not_after", a.NotAfter.UTC().Format(time.RFC3339))
	}
	mode, _ := proxy.ParseClientTLSMode(rc.ClientTLS)
	var serverTLS *tls.Config
	if mode != proxy.ClientTLSDisable {
		if rc.ClientTLSCert != "" {
			serverTLS, err = proxy.LoadServerTLSConfig(rc.ClientTLSCert, rc.ClientTLSKey)
		} else {
			serverTLS, err = proxy.SelfSignedTLSConfig()
		}
		if err != nil {
			return proxy.Route{}, nil, err
		}
	}
	d := &chain.Dialer{
		Host:           spec.Host,
		Port:           spec.Port,
		ServerName:     rc.ServerName,
		Roots:          roots,
		ConnectTimeout: rc.ConnectTimeout,
		OnCommonName: func(c *x509.Certificate) {
			log.Warn("upstream certificate matched by its common name only (it has no subjectAltName of the host's type); libpq accepts this too, but ask the server's operator for a certificate with a SAN",
				"cn", c.Subject.CommonName)
		},
	}
	route := proxy.Route{
		Name:         "default",
		Listen:       rc.Listen,
		UpstreamAddr: spec.addr(),
		Trust:        "the roots in --ca-file " + rc.CAFile,
		Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := d.Dial(ctx)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		ClientTLS:      mode,
		TLSConfig:      serverTLS,
		StartupTimeout: rc.StartupTimeout,
	}
	return route, d, nil
}

func runProxy(cmd *cobra.Command, configFile string) error {
	rc, err := loadRunConfig(cmd.Flags(), configFile)
	if err != nil {
		return usageError{err}
	}
	if err := rc.validate(); err != nil {
		return usageError{err}
	}
	log, err := newLogger(rc)
	if err != nil {
		return usageError{err}
	}
	route, dialer, err := buildRoute(rc, log)
	if err != nil {
		return usageError{err}
	}
	srv, err := proxy.New(proxy.Config{Routes: []proxy.Route{route}, Logger: log})
	if err != nil {
		return usageError{err}
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	go checkUpstream(cmd.Context(), dialer, log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(context.Background()) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: no new connections; waiting for running sessions", "drain_timeout", rc.DrainTimeout.String())
	dctx, cancel := context.WithTimeout(context.Background(), rc.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain timeout reached: remaining sessions closed")
	}
	<-serveErr
	return nil
}

// checkUpstream dials the upstream once at start-up so that a wrong address
// or an untrusted certificate shows in the log before the first client.
func checkUpstream(ctx context.Context, d *chain.Dialer, log *slog.Logger) {
	if ctx == nil {
		ctx = context.Background()
	}
	start := time.Now()
	c, err := d.Dial(ctx)
	if err != nil {
		log.Error("upstream check failed; clients will get this error until it is fixed", "error", err.Error())
		return
	}
	defer c.Close()
	cs := c.ConnectionState()
	leaf := cs.PeerCertificates[0]
	log.Info("upstream verified (verify-full)",
		"upstream", d.Addr(), "server_name", d.VerifyName(),
		"tls", tls.VersionName(cs.Version), "leaf", leaf.Subject.String(),
		"leaf_expires", leaf.NotAfter.UTC().Format(time.RFC3339),
		"rtt", time.Since(start).Round(time.Millisecond).String())
}
