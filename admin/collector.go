package admin

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// Descriptions of the metrics computed at scrape time.
var (
	activeDesc = prometheus.NewDesc("pgverifyproxy_sessions_active",
		"Client connections open now, by route.", []string{"route"}, nil)
	bytesDesc = prometheus.NewDesc("pgverifyproxy_bytes_total",
		"Bytes relayed, by route and direction (to_upstream, to_client).", []string{"route", "direction"}, nil)
	startingDesc = prometheus.NewDesc("pgverifyproxy_startup_connections",
		"Client connections in their startup phase now (accepted, not yet admitted), by route; max_startup_connections bounds their sum.", []string{"route"}, nil)
	startupWaitsDesc = prometheus.NewDesc("pgverifyproxy_startup_waits_total",
		"Accepts that waited because max_startup_connections connections were in their startup phase, by route.", []string{"route"}, nil)
	leafExpiryDesc = prometheus.NewDesc("pgverifyproxy_upstream_leaf_expiry_seconds",
		"Seconds until the NotAfter of the leaf certificate of the route's last verified upstream path (negative once expired).", []string{"route"}, nil)
	anchorExpiryDesc = prometheus.NewDesc("pgverifyproxy_upstream_anchor_expiry_seconds",
		"Seconds until the NotAfter of the trust anchor of the route's last verified upstream path (negative once expired).", []string{"route"}, nil)
	hostUpDesc = prometheus.NewDesc("pgverifyproxy_upstream_host_up",
		"1 when the last dial of this host of the route's upstream passed verify-full, 0 when it failed (the hosts of the route's configuration; absent until dialled).",
		[]string{"route", "host"}, nil)
	readyDesc = prometheus.NewDesc("pgverifyproxy_route_ready",
		"1 when the route's upstream was reached and verified recently and its last dial succeeded, else 0.", []string{"route"}, nil)
	buildDesc = prometheus.NewDesc("pgverifyproxy_build_info",
		"Always 1; labelled with the proxy's version and the Go version it was built with.", []string{"version", "goversion"}, nil)
)

// liveCollector exports, at scrape time, the proxy's live counters (from
// Options.Stats), the expiry countdowns, route readiness and build info.
type liveCollector struct {
	a       *Admin
	version string
}

// Describe sends the descriptions of the metrics liveCollector exports.
func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{activeDesc, bytesDesc, startingDesc, startupWaitsDesc, leafExpiryDesc, anchorExpiryDesc, readyDesc, hostUpDesc, buildDesc} {
		ch <- d
	}
}

// Collect reads the live counters and route state and sends them as
// constant metrics.
func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(buildDesc, prometheus.GaugeValue, 1, c.version, runtime.Version())
	if c.a.stats != nil {
		seen := map[string]bool{}
		for _, s := range c.a.stats() {
			if seen[s.Route] { // a duplicate would fail the whole scrape
				continue
			}
			seen[s.Route] = true
			ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(s.Active), s.Route)
			ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.BytesToUpstream), s.Route, "to_upstream")
			ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.BytesToClient), s.Route, "to_client")
			ch <- prometheus.MustNewConstMetric(startingDesc, prometheus.GaugeValue, float64(s.Starting), s.Route)
			ch <- prometheus.MustNewConstMetric(startupWaitsDesc, prometheus.CounterValue, float64(s.StartupWaits), s.Route)
		}
	}
	now := c.a.now()
	for _, h := range c.a.health(now) {
		ready := 0.0
		if h.ready {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, ready, h.route)
		for host, up := range h.st.hostUp {
			v := 0.0
			if up {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(hostUpDesc, prometheus.GaugeValue, v, h.route, host)
		}
		if !h.st.leafNotAfter.IsZero() {
			ch <- prometheus.MustNewConstMetric(leafExpiryDesc, prometheus.GaugeValue, h.st.leafNotAfter.Sub(now).Seconds(), h.route)
		}
		if !h.st.anchorNotAfter.IsZero() {
			ch <- prometheus.MustNewConstMetric(anchorExpiryDesc, prometheus.GaugeValue, h.st.anchorNotAfter.Sub(now).Seconds(), h.route)
		}
	}
}
