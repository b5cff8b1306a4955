package admin

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// hostCheck answers 421 Misdirected Request to a request whose Host header
// is not an IP literal, localhost or one of names: the defence against DNS
// rebinding, where a web page's own name is made to resolve to the admin
// address and the browser then sends the page's requests there with the
// page's name as Host. Programs that reach the endpoint by address
// (Kubernetes probes, `pgverifyproxy ready`, Prometheus with an IP target)
// send an IP literal.
func hostCheck(names []string, next http.Handler) http.Handler {
	allowed := make(map[string]bool, len(names))
	for _, n := range names {
		allowed[canonicalHost(n)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, allowed) {
			writeText(w, http.StatusMisdirectedRequest, fmt.Sprintf(
				"admin: the Host header %s is not an IP address, localhost or a name in admin_hosts: reach this endpoint by its address, or add the name you use to admin_hosts (refused so that a web page cannot reach it by DNS rebinding)",
				strconv.QuoteToASCII(r.Host)))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostAllowed tells whether a Host header value names the endpoint by
// address, as localhost or by an allowed name.
func hostAllowed(host string, allowed map[string]bool) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if h == "" {
		// HTTP/1.0 without Host: not a browser.
		return host == ""
	}
	if ip, _, _ := strings.Cut(h, "%"); net.ParseIP(ip) != nil {
		return true
	}
	c := canonicalHost(h)
	return c == "localhost" || allowed[c]
}

// canonicalHost lowercases a host name and drops a trailing dot.
func canonicalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}
