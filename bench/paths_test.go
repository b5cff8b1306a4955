//go:build linux

package main

import (
	"slices"
	"testing"
)

func TestFocusStages(t *testing.T) {
	all := []stage{stSelect, stStrace, stConnRate, stTTFQ, stTTFQDelayed, stCopy, stIdle}
	for _, tc := range []struct {
		focus  string
		stages []stage
		want   []stage
	}{
		{"select", all, []stage{stSelect, stStrace}},
		{"connect", all, []stage{stConnRate, stTTFQ, stTTFQDelayed}},
		{"connect", []stage{stSelect, stCopy}, nil},
		{"select", []stage{stConnRate, stTTFQ}, nil},
	} {
		if got := focusStages(tc.focus, tc.stages); !slices.Equal(got, tc.want) {
			t.Errorf("focusStages(%q, %v) = %v, want %v", tc.focus, tc.stages, got, tc.want)
		}
	}
}

func TestFocusPaths(t *testing.T) {
	for _, tc := range []struct {
		focus string
		want  []string
	}{
		{"select", []string{"direct", "pgverifyproxy", "goroutine", "pgbouncer", "stunnel"}},
		{"connect", []string{"direct", "pgverifyproxy", "goroutine", "prewarm", "prewarm-goroutine"}},
		{"", []string{"direct", "pgverifyproxy", "scram", "goroutine", "prewarm", "prewarm-goroutine", "pgbouncer", "stunnel"}},
	} {
		b := &bench{o: options{focus: tc.focus, prewarm: 4}, hasPrewarm: true, hasRelay: true}
		paths, err := b.selectPaths()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range paths {
			got = append(got, p.key)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("-focus %q: paths %v, want %v", tc.focus, got, tc.want)
		}
	}
}
