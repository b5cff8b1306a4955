package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// defaultPGPort is PostgreSQL's port when none is given.
const defaultPGPort = 5432

// upstreamSpec is a parsed --upstream value.
type upstreamSpec struct {
	Host string
	Port int
	// Ignored lists the parts of a libpq URI that the proxy does not use,
	// for the log ("user", "database", "sslmode=require", ...).
	Ignored []string
}

func (u upstreamSpec) addr() string { return net.JoinHostPort(u.Host, strconv.Itoa(u.Port)) }

// parseUpstream accepts HOST, HOST:PORT, [IPv6]:PORT or a libpq URI
// (postgres://user:pw@host:port/db?sslmode=require) as a provider's console
// shows it. From a URI only the host and port are used.
func parseUpstream(s string) (upstreamSpec, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return upstreamSpec{}, errors.New("upstream is empty")
	}
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return parseUpstreamURI(s)
	}
	if strings.Contains(s, "://") {
		return upstreamSpec{}, fmt.Errorf("upstream %q: only postgres:// and postgresql:// URIs are understood", s)
	}
	host, port, err := splitHostPort(s)
	if err != nil {
		return upstreamSpec{}, fmt.Errorf("upstream %q: %w", s, err)
	}
	return upstreamSpec{Host: host, Port: port}, nil
}

func parseUpstreamURI(s string) (upstreamSpec, error) {
	u, err := url.Parse(s)
	if err != nil {
		// Do not echo the URI: it may hold a password.
		return upstreamSpec{}, errors.New("upstream URI cannot be parsed")
	}
	if strings.Contains(u.Host, ",") {
		return upstreamSpec{}, errors.New("upstream URI names several hosts; give one upstream per route")
	}
	if u.Host == "" {
		return upstreamSpec{}, errors.New("upstream URI has no host (unix-socket upstreams are not supported: the proxy's point is TLS)")
	}
	host, port, err := splitHostPort(u.Host)
	if err != nil {
		return upstreamSpec{}, fmt.Errorf("upstream URI: %w", err)
	}
	spec := upstreamSpec{Host: host, Port: port}
	if u.User != nil {
		spec.Ignored = append(spec.Ignored, "user")
		if _, has := u.User.Password(); has {
			spec.Ignored = append(spec.Ignored, "password")
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		spec.Ignored = append(spec.Ignored, "database")
	}
	q := u.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "sslmode" {
			// Harmless and worth showing: the proxy does verify-full anyway.
			spec.Ignored = append(spec.Ignored, k+"="+q.Get(k))
			continue
		}
		spec.Ignored = append(spec.Ignored, k) // values may be secrets

	}
	return spec, nil
}

// splitHostPort splits host[:port], defaulting the port to 5432.
func splitHostPort(s string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a bare host or a bare IPv6 literal.
		host, portStr = s, ""
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		}
	}
	if host == "" {
		return "", 0, errors.New("no host")
	}
	port := defaultPGPort
	if portStr != "" {
		p, err := strconv.Atoi(portStr)
		if err != nil || p < 1 || p > 65535 {
			return "", 0, fmt.Errorf("invalid port %q", portStr)
		}
		port = p
	}
	return host, port, nil
}
