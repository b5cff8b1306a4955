package chain

import (
	"bytes"
	"container/list"
	"crypto/x509"
	"sync"
	"time"
)

// Limits of the cache of verified intermediates.
const (
	// AIACacheSize is the default number of verified intermediates a
	// Completer keeps (Completer.CacheSize).
	AIACacheSize = 64
	// AIACacheTTL is the default time a verified intermediate stays
	// cached (Completer.CacheTTL), counted from when it was first
	// remembered.
	AIACacheTTL = 24 * time.Hour
)

// verifiedCache holds intermediates that were part of a verified path:
// at most size of them, least recently used evicted first, none older
// than ttl. Nothing an upstream merely presented or an AIA server merely
// answered gets in: only what Remember is given after a verification.
type verifiedCache struct {
	mu    sync.Mutex
	lru   *list.List               // of *cacheEntry, most recently used first
	byRaw map[string]*list.Element // key: the certificate's DER
}

type cacheEntry struct {
	cert  *x509.Certificate
	added time.Time
}

func (c *Completer) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Completer) cacheSize() int {
	if c.CacheSize == 0 {
		return AIACacheSize
	}
	return c.CacheSize
}

func (c *Completer) cacheTTL() time.Duration {
	if c.CacheTTL <= 0 {
		return AIACacheTTL
	}
	return c.CacheTTL
}

// Remember caches the intermediates that AIA fetched for a chain that then
// verified: path is the verified chain (leaf first, anchor last) and
// fetched what Complete or CompleteUnder returned for it. Only the
// certificates of fetched that are in path (same DER) are kept, never the
// leaf nor the anchor (path's first and last element). A later Complete or
// CompleteUnder uses a cached certificate instead of fetching when it is
// the issuer of a certificate whose issuer is missing (same name, and its
// key signs it). The cache holds CacheSize certificates at most (least
// recently used evicted first) and each for CacheTTL at most.
func (c *Completer) Remember(path, fetched []*x509.Certificate) {
	size := c.cacheSize()
	if size < 0 || len(path) < 3 || len(fetched) == 0 {
		return
	}
	now := c.now()
	ttl := c.cacheTTL()
	vc := &c.cache
	vc.mu.Lock()
	defer vc.mu.Unlock()
	if vc.lru == nil {
		vc.lru = list.New()
		vc.byRaw = map[string]*list.Element{}
	}
	for _, pc := range path[1 : len(path)-1] {
		if !containsCert(fetched, pc) {
			continue
		}
		key := string(pc.Raw)
		if el, ok := vc.byRaw[key]; ok {
			e := el.Value.(*cacheEntry)
			if now.Sub(e.added) >= ttl {
				e.added = now // expired: cached anew
			}
			vc.lru.MoveToFront(el)
			continue
		}
		vc.byRaw[key] = vc.lru.PushFront(&cacheEntry{cert: pc, added: now})
		for vc.lru.Len() > size {
			vc.remove(vc.lru.Back())
		}
	}
}

func (vc *verifiedCache) remove(el *list.Element) {
	delete(vc.byRaw, string(el.Value.(*cacheEntry).cert.Raw))
	vc.lru.Remove(el)
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if bytes.Equal(x.Raw, c.Raw) {
			return true
		}
	}
	return false
}

// cachedIssuers returns the cached certificates that issued cert: same
// name as its issuer, and their key signs it. Entries past CacheTTL or
// past their own NotAfter are dropped on the way; those found become the
// most recently used.
func (c *Completer) cachedIssuers(cert *x509.Certificate) []*x509.Certificate {
	if c.cacheSize() < 0 {
		return nil
	}
	now := c.now()
	ttl := c.cacheTTL()
	vc := &c.cache
	vc.mu.Lock()
	defer vc.mu.Unlock()
	if vc.lru == nil {
		return nil
	}
	var found []*list.Element
	for el := vc.lru.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*cacheEntry)
		switch {
		case now.Sub(e.added) >= ttl || now.After(e.cert.NotAfter):
			vc.remove(el)
		case bytes.Equal(e.cert.RawSubject, cert.RawIssuer) && cert.CheckSignatureFrom(e.cert) == nil:
			found = append(found, el)
		}
		el = next
	}
	out := make([]*x509.Certificate, 0, len(found))
	for i := len(found) - 1; i >= 0; i-- {
		vc.lru.MoveToFront(found[i])
	}
	for _, el := range found {
		out = append(out, el.Value.(*cacheEntry).cert)
	}
	return out
}
