package main

import (
	"errors"
	"fmt"
	"net"
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
// shows it, naming one host (parseUpstreamList reads host lists). From a
// URI only the host and port are used (and, by the route, its
// target_session_attrs and load_balance_hosts).
func parseUpstream(s string) (upstreamSpec, error) {
	l, err := parseUpstreamList(s)
	if err != nil {
		return upstreamSpec{}, err
	}
	if len(l.Hosts) != 1 {
		return upstreamSpec{}, fmt.Errorf("upstream names several hosts (%d) where one is expected", len(l.Hosts))
	}
	return upstreamSpec{Host: l.Hosts[0].Host, Port: l.Hosts[0].Port, Ignored: l.Ignored}, nil
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
