package proxy

import (
	"strings"
	"testing"
)

func TestParseListenAddr(t *testing.T) {
	long := "/" + strings.Repeat("d", 100)
	tests := []struct {
		in       string
		network  string
		address  string
		wantErr  string
		wantErr2 string // also in the error, if set
	}{
		{in: "127.0.0.1:5432", network: "tcp", address: "127.0.0.1:5432"},
		{in: "[::1]:6432", network: "tcp", address: "[::1]:6432"},
		{in: ":5432", network: "tcp", address: ":5432"},
		{in: "localhost", wantErr: "want HOST:PORT"},
		{in: "127.0.0.1:", wantErr: "want HOST:PORT"},
		{in: "unix:/run/pg", network: "unix", address: "/run/pg/.s.PGSQL.5432"},
		{in: "unix:/run/pg/", network: "unix", address: "/run/pg/.s.PGSQL.5432"},
		{in: "unix:/run/pg:6432", network: "unix", address: "/run/pg/.s.PGSQL.6432"},
		{in: "unix:/run/pg/.s.PGSQL.7000", network: "unix", address: "/run/pg/.s.PGSQL.7000"},
		{in: "unix:run/pg", wantErr: "absolute path"},
		{in: "unix:/run/pg:port", wantErr: "not a number"},
		{in: "unix:/run/pg:70000", wantErr: "not a number"},
		{in: "unix:" + long, wantErr: "the limit is 107"},
		{in: "unix:/run/pg/.s.PGSQL.6432:7000", wantErr: "the port is given twice"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			if strings.HasPrefix(tc.in, unixPrefix) && tc.wantErr != "not a number" && unixListenersUnavailable(5432) != nil {
				// Refused here (Windows), with the socket's port as a TCP
				// one to use instead.
				if tc.network == "unix" {
					port := tc.address[strings.LastIndexByte(tc.address, '.')+1:]
					tc.wantErr2 = "listen on 127.0.0.1:" + port
				}
				tc.wantErr = "unix-socket listeners are not available on "
			}
			got, err := ParseListenAddr(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.wantErr2) {
					t.Fatalf("ParseListenAddr(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Network != tc.network || got.Address != tc.address {
				t.Fatalf("ParseListenAddr(%q) = %+v, %v; want %s %s", tc.in, got, err, tc.network, tc.address)
			}
		})
	}
}
