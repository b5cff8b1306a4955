package chain_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestRouteTrustDial: the proxy's dial never hands out a typed nil.
func TestRouteTrustDial(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	rt, err := chain.NewRouteTrust(chain.RouteConfig{Host: "127.0.0.1", Port: port, CAFile: caFile(t, pki.Root), ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rt.HintContext().Repin != "" || rt.Describe != "the roots in --ca-file "+rt.CAFile || len(rt.CAAnchors) != 1 {
		t.Fatalf("a CA-file route: %+v", rt)
	}
	c, err := rt.Dial(context.Background())
	if err == nil || c != nil {
		t.Fatalf("Dial to a closed port: %v, %v", c, err)
	}
}
