//go:build linux

package main

import "testing"

// statusCtxt is the end of a real /proc/PID/task/TID/status of a proxy
// thread, from the ctx switch lines on.
const statusCtxt = "Name:\tpgverifyproxy\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t79681\nnonvoluntary_ctxt_switches:\t62451\n"

func TestParseSchedstat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		ns      int64
		wantErr bool
	}{
		{"a thread", "4618123456 3098288 17\n", 4618123456, false},
		{"never ran", "0 0 0\n", 0, false},
		{"two fields", "5549464 3098288\n", 0, true},
		{"not a number", "x 3098288 17\n", 0, true},
		{"negative", "-5 3098288 17\n", 0, true},
		{"empty (the thread exited)", "", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, err := parseSchedstat([]byte(tc.in))
			if (err != nil) != tc.wantErr || ns != tc.ns {
				t.Errorf("parseSchedstat(%q) = %d, %v; want %d (error: %v)", tc.in, ns, err, tc.ns, tc.wantErr)
			}
		})
	}
}

func TestParseCtxtSwitches(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         string
		vol, invol int64
		wantErr    bool
	}{
		{"a proxy thread", statusCtxt, 79681, 62451, false},
		{"no switch lines (a zombie)", statusZombie, 0, 0, true},
		{"only voluntary", "voluntary_ctxt_switches:\t3\n", 0, 0, true},
		{"not a number", "voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t1\n", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vol, invol, err := parseCtxtSwitches([]byte(tc.in))
			if (err != nil) != tc.wantErr || vol != tc.vol || invol != tc.invol {
				t.Errorf("parseCtxtSwitches = %d, %d, %v; want %d, %d (error: %v)", vol, invol, err, tc.vol, tc.invol, tc.wantErr)
			}
		})
	}
}
