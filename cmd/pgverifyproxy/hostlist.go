package main

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// upstreamHost is one host of an upstream list, dialled and verified under
// its own name.
type upstreamHost struct {
	Host string
	Port int
}

// addr is host:port, as dialled and named in messages.
func (h upstreamHost) addr() string { return net.JoinHostPort(h.Host, strconv.Itoa(h.Port)) }

// upstreamList is a parsed upstream with libpq's multi-host options
// (issue 25): the hosts in order, target_session_attrs and
// load_balance_hosts.
type upstreamList struct {
	Hosts []upstreamHost
	// TargetSessionAttrs is libpq's: any, read-write, read-only, primary,
	// standby or prefer-standby; "" when the URI does not say.
	TargetSessionAttrs string
	// LoadBalanceHosts is disable (in order) or random; "" when the URI
	// does not say.
	LoadBalanceHosts string
	// Ignored lists the parts of a URI the proxy does not use.
	Ignored []string
}

// targetSessionAttrs are libpq's values of target_session_attrs.
var targetSessionAttrs = []string{"any", "read-write", "read-only", "primary", "standby", "prefer-standby"}

// parseUpstreamList accepts what parseUpstream does and host lists with
// libpq's rules: "h1:5432,h2:5433,h3" (a host without a port gets 5432,
// brackets around IPv6 literals), and a URI with several hosts
// (postgres://h1:5432,h2:5433/db?target_session_attrs=read-write&load_balance_hosts=random),
// whose target_session_attrs and load_balance_hosts are read; other
// parameters are ignored as parseUpstream ignores them.
func parseUpstreamList(s string) (upstreamList, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return upstreamList{}, errors.New("upstream is empty")
	}
	// Empty TargetSessionAttrs and LoadBalanceHosts: not in a URI (the
	// route's settings then apply).
	out := upstreamList{}
	hostPart := s
	isURI := strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
	if isURI {
		rest := s[strings.Index(s, "://")+3:]
		// The authority ends at the first '/', '?' or '#'; user info
		// ends at the last '@' before it.
		end := strings.IndexAny(rest, "/?#")
		if end < 0 {
			end = len(rest)
		}
		authority, tail := rest[:end], rest[end:]
		if at := strings.LastIndexByte(authority, '@'); at >= 0 {
			out.Ignored = append(out.Ignored, "user")
			if strings.Contains(authority[:at], ":") {
				out.Ignored = append(out.Ignored, "password")
			}
			authority = authority[at+1:]
		}
		hostPart = authority
		// The rest is parsed as a URL of its own, with one placeholder
		// host, for the path and the query.
		u, err := url.Parse("postgres://h" + tail)
		if err != nil {
			return upstreamList{}, errors.New("upstream URI cannot be parsed") // never echo: it may hold a password
		}
		if db := strings.TrimPrefix(u.Path, "/"); db != "" {
			out.Ignored = append(out.Ignored, "database")
		}
		q := u.Query()
		for _, k := range slices.Sorted(maps.Keys(q)) {
			v := q.Get(k)
			switch k {
			case "target_session_attrs":
				if !slices.Contains(targetSessionAttrs, v) {
					return upstreamList{}, fmt.Errorf("upstream URI: target_session_attrs must be one of %s, not %s", strings.Join(targetSessionAttrs, ", "), strconv.Quote(v))
				}
				out.TargetSessionAttrs = v
			case "load_balance_hosts":
				if v != "disable" && v != "random" {
					return upstreamList{}, fmt.Errorf("upstream URI: load_balance_hosts must be disable or random, not %s", strconv.Quote(v))
				}
				out.LoadBalanceHosts = v
			case "sslmode":
				out.Ignored = append(out.Ignored, k+"="+v)
			default:
				out.Ignored = append(out.Ignored, k) // values may be secrets
			}
		}
		if hostPart == "" {
			return upstreamList{}, errors.New("upstream URI has no host (unix-socket upstreams are not supported: the proxy's point is TLS)")
		}
	} else if strings.Contains(s, "://") {
		return upstreamList{}, fmt.Errorf("upstream %q: only postgres:// and postgresql:// URIs are understood", s)
	}
	for i, h := range splitHosts(hostPart) {
		if isURI {
			var err error
			if h, err = url.PathUnescape(h); err != nil {
				return upstreamList{}, fmt.Errorf("upstream URI: host %d: %w", i+1, err)
			}
		}
		host, port, err := splitHostPort(h)
		if err != nil {
			if isURI {
				return upstreamList{}, fmt.Errorf("upstream URI: host %d: %w", i+1, err)
			}
			return upstreamList{}, fmt.Errorf("upstream %q: host %d: %w", s, i+1, err)
		}
		out.Hosts = append(out.Hosts, upstreamHost{Host: host, Port: port})
	}
	return out, nil
}

// splitHosts splits a comma-separated host list, keeping the commas
// inside [IPv6] brackets (there are none in a valid literal, but a
// malformed one must not be split into hosts that look valid).
func splitHosts(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
