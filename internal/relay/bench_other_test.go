//go:build !unix

package relay

// rusage returns zeros: there is no getrusage here, so the relay
// benchmarks report no cs/op and cpu-ns/op.
func rusage() (cs, cpu int64) { return 0, 0 }
