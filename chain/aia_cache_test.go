package chain_test

import (
	"context"
	"crypto/x509"
	"strconv"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestCompleteCache: Complete caches nothing by itself (what an upstream
// or an AIA server hands out is not verified); what Remember is given after
// a verification is used before fetching. The cache belongs to the
// Completer.
func TestCompleteCache(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia cache root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia cache inter", []string{srv.url("/root")}))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	srv.serve("/root", root.Cert.Raw)
	presented := []*x509.Certificate{leaf.Cert}

	c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	var got []*x509.Certificate
	for i := range 3 {
		var err error
		got, err = c.Complete(context.Background(), presented, nil)
		if err != nil {
			t.Fatalf("Complete #%d: %v", i+1, err)
		}
		wantCerts(t, got, inter, root)
	}
	for _, p := range []string{"/inter", "/root"} {
		if n := srv.count(p); n != 3 {
			t.Errorf("%s requested %d times, want 3 (nothing unverified is cached)", p, n)
		}
	}
	// The verifier remembers what verified: the path leaf, inter, root.
	path := verifiedPath(t, leaf.Cert, testpki.Pool(root), got...)
	c.Remember(path, got)

	// With the root as anchor only the intermediate is needed: from cache.
	got, err := c.Complete(context.Background(), presented, testpki.Pool(root))
	if err != nil {
		t.Fatalf("Complete with roots: %v", err)
	}
	wantCerts(t, got, inter)
	for _, p := range []string{"/inter", "/root"} {
		if n := srv.count(p); n != 3 {
			t.Errorf("%s requested %d times, want 3 (cached)", p, n)
		}
	}
	// The anchor (the path's last element) is never cached.
	got, err = c.Complete(context.Background(), presented, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantCerts(t, got, inter, root)
	if n, m := srv.count("/inter"), srv.count("/root"); n != 3 || m != 4 {
		t.Errorf("/inter, /root requested %d, %d times, want 3 (cached), 4 (the anchor is not cached)", n, m)
	}
	// The cache belongs to the Completer.
	fresh := chain.Completer{AllowPrivate: true}
	if _, err := fresh.Complete(context.Background(), presented, testpki.Pool(root)); err != nil {
		t.Fatal(err)
	}
	if n := srv.count("/inter"); n != 4 {
		t.Errorf("/inter requested %d times after a new Completer, want 4", n)
	}
}

// TestRememberCache: what Remember keeps, what it never keeps, the TTL and
// the LRU bound, each seen through the requests Complete makes.
func TestRememberCache(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia remember root"))
	type route struct {
		inter, leaf *testpki.Cert
		path        string
	}
	newRoute := func(name string) route {
		inter := must[*testpki.Cert](t)(testpki.NewIntermediateCA(root, "aia remember "+name))
		p := "/" + name
		srv.serve(p, inter.Cert.Raw)
		return route{inter: inter, leaf: leafWithAIA(t, inter, srv.url(p)), path: p}
	}
	now := time.Now() // the certificates are valid for 48h: the cache drops expired ones
	clock := func() time.Time { return now }
	// complete runs Complete for r and reports whether it fetched.
	complete := func(t *testing.T, c *chain.Completer, r route) (fetched bool) {
		t.Helper()
		before := srv.count(r.path)
		got, err := c.Complete(context.Background(), []*x509.Certificate{r.leaf.Cert}, testpki.Pool(root))
		if err != nil {
			t.Fatalf("Complete: %v", err)
		}
		wantCerts(t, got, r.inter)
		return srv.count(r.path) > before
	}
	// learn fetches r's intermediate and remembers the verified path.
	learn := func(t *testing.T, c *chain.Completer, r route) {
		t.Helper()
		got, err := c.Complete(context.Background(), []*x509.Certificate{r.leaf.Cert}, testpki.Pool(root))
		if err != nil {
			t.Fatal(err)
		}
		c.Remember(verifiedPath(t, r.leaf.Cert, testpki.Pool(root), got...), got)
	}

	t.Run("a remembered intermediate is used without a request", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true}
		r := newRoute("used")
		learn(t, c, r)
		if complete(t, c, r) {
			t.Error("fetched although the verified intermediate is cached")
		}
	})
	t.Run("a new leaf of the same intermediate uses it too", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true}
		r := newRoute("renewed")
		learn(t, c, r)
		r.leaf = leafWithAIA(t, r.inter, srv.url(r.path))
		if complete(t, c, r) {
			t.Error("fetched for a renewed leaf under the cached intermediate")
		}
	})
	t.Run("only fetched certificates of the path, never the leaf or the anchor", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true}
		r := newRoute("subset")
		path := verifiedPath(t, r.leaf.Cert, testpki.Pool(root), r.inter.Cert)
		c.Remember(path, nil)                                                     // nothing was fetched
		c.Remember(path[:2], []*x509.Certificate{r.inter.Cert})                   // inter is that path's last element
		c.Remember(path, []*x509.Certificate{r.leaf.Cert, root.Cert})             // leaf and anchor
		c.Remember([]*x509.Certificate{r.leaf.Cert, root.Cert}, path)             // no intermediate in the path
		c.Remember(path[1:], []*x509.Certificate{r.inter.Cert, r.inter.Cert}[:0]) // nothing
		if !complete(t, c, r) {
			t.Error("not fetched: something unverified or out of the path was cached")
		}
	})
	t.Run("a cached certificate with the issuer's name but another key is not used", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true}
		r := newRoute("twin")
		learn(t, c, r)
		twin := must[*testpki.Cert](t)(testpki.NewIntermediateCA(root, "aia remember twin")) // same name, new key
		srv.serve("/twin2", twin.Cert.Raw)
		r2 := route{inter: twin, leaf: leafWithAIA(t, twin, srv.url("/twin2")), path: "/twin2"}
		if !complete(t, c, r2) {
			t.Error("a cached certificate that does not sign the leaf was used")
		}
	})
	t.Run("entries expire after CacheTTL", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true, CacheTTL: time.Hour, Now: clock}
		r := newRoute("ttl")
		learn(t, c, r)
		now = now.Add(59 * time.Minute)
		if complete(t, c, r) {
			t.Error("fetched before CacheTTL")
		}
		learn(t, c, r) // remembering again does not make it younger
		now = now.Add(time.Minute)
		if !complete(t, c, r) {
			t.Error("not fetched after CacheTTL")
		}
	})
	t.Run("default TTL is 24h", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true, Now: clock}
		r := newRoute("ttl24")
		learn(t, c, r)
		now = now.Add(chain.AIACacheTTL - time.Second)
		if complete(t, c, r) {
			t.Error("fetched before 24h")
		}
		now = now.Add(time.Second)
		if !complete(t, c, r) {
			t.Error("not fetched after 24h")
		}
	})
	t.Run("an intermediate past its NotAfter is not used", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true, CacheTTL: 1000 * time.Hour, Now: clock}
		r := newRoute("notafter")
		learn(t, c, r)
		now = r.inter.Cert.NotAfter.Add(time.Second)
		if !complete(t, c, r) {
			t.Error("an expired intermediate was used from the cache")
		}
	})
	t.Run("LRU bound at CacheSize", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true, CacheSize: 2}
		a, b, d := newRoute("lru-a"), newRoute("lru-b"), newRoute("lru-c")
		learn(t, c, a)
		learn(t, c, b)
		if complete(t, c, a) { // a is now the most recently used
			t.Fatal("a fetched")
		}
		learn(t, c, d) // evicts b, the least recently used
		if complete(t, c, a) {
			t.Error("a fetched: evicted although recently used")
		}
		if complete(t, c, d) {
			t.Error("c fetched right after it was remembered")
		}
		if !complete(t, c, b) {
			t.Error("b not fetched: the cache holds more than CacheSize")
		}
	})
	t.Run("default size is 64", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true}
		var routes []route
		for i := range chain.AIACacheSize + 1 {
			r := newRoute("size-" + strconv.Itoa(i))
			learn(t, c, r)
			routes = append(routes, r)
		}
		if !complete(t, c, routes[0]) {
			t.Error("the 65th intermediate did not evict the first")
		}
		if complete(t, c, routes[len(routes)-1]) {
			t.Error("the last one is not cached")
		}
	})
	t.Run("negative CacheSize keeps nothing", func(t *testing.T) {
		c := &chain.Completer{AllowPrivate: true, CacheSize: -1}
		r := newRoute("off")
		learn(t, c, r)
		if !complete(t, c, r) {
			t.Error("cached with CacheSize -1")
		}
	})
	t.Run("a cached cross-sign that leads elsewhere does not stop the fetch", func(t *testing.T) {
		other := must[*testpki.Cert](t)(testpki.NewRootCA("aia remember other root"))
		r := newRoute("cross")
		cross := reissued(t, r.inter, other)
		c := &chain.Completer{AllowPrivate: true}
		// Another route verified the same intermediate under another root.
		c.Remember([]*x509.Certificate{r.leaf.Cert, cross.Cert, other.Cert}, []*x509.Certificate{cross.Cert})
		before := srv.count(r.path)
		got, err := c.Complete(context.Background(), []*x509.Certificate{r.leaf.Cert}, testpki.Pool(root))
		if err != nil {
			t.Fatal(err)
		}
		if srv.count(r.path) != before+1 {
			t.Error("not fetched: the cross-sign from the cache was taken as enough")
		}
		if err := verifyLeaf(r.leaf.Cert, testpki.Pool(root), got...); err != nil {
			t.Errorf("does not verify under root with %s: %v", names(got), err)
		}
	})
}
