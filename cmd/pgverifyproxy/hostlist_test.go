package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseUpstreamList(t *testing.T) {
	tests := []struct {
		in      string
		hosts   []upstreamHost
		attrs   string
		lb      string
		ignored []string
		err     string
	}{
		{in: "db.example.com", hosts: []upstreamHost{{"db.example.com", 5432}}, attrs: "", lb: ""},
		{in: "a:5432,b:5433,c", hosts: []upstreamHost{{"a", 5432}, {"b", 5433}, {"c", 5432}}, attrs: "", lb: ""},
		{in: "[2001:db8::1]:6432,[2001:db8::2]", hosts: []upstreamHost{{"2001:db8::1", 6432}, {"2001:db8::2", 5432}}, attrs: "", lb: ""},
		{in: "postgres://u:secret@h1:5432,h2:5433/app?target_session_attrs=read-write&load_balance_hosts=random&sslmode=require",
			hosts: []upstreamHost{{"h1", 5432}, {"h2", 5433}}, attrs: "read-write", lb: "random",
			ignored: []string{"user", "password", "database", "sslmode=require"}},
		{in: "postgresql://h1,h2:7000?target_session_attrs=prefer-standby", hosts: []upstreamHost{{"h1", 5432}, {"h2", 7000}}, attrs: "prefer-standby", lb: ""},
		{in: "postgres://[::1]:5433,[::2]/db", hosts: []upstreamHost{{"::1", 5433}, {"::2", 5432}}, attrs: "", lb: "", ignored: []string{"database"}},
		{in: "postgres://h1,h2?target_session_attrs=master", err: "target_session_attrs must be one of"},
		{in: "postgres://h1,h2?load_balance_hosts=yes", err: "load_balance_hosts must be disable or random"},
		{in: "a:5432,,b", err: "host 2: no host"},
		{in: "a:99999", err: "host 1: invalid port"},
		{in: "postgres:///db", err: "has no host"},
		{in: "mysql://h", err: "only postgres://"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseUpstreamList(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %+v, %v; want error %q", got, err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Fatalf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got.Hosts, tc.hosts) || got.TargetSessionAttrs != tc.attrs || got.LoadBalanceHosts != tc.lb || !reflect.DeepEqual(got.Ignored, tc.ignored) {
				t.Fatalf("got %+v, %v; want hosts %v attrs %s lb %s ignored %v", got, err, tc.hosts, tc.attrs, tc.lb, tc.ignored)
			}
		})
	}
}
