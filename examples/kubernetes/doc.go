// Package kubernetes holds pgverifyproxy's Kubernetes examples
// (deployment.yaml, job.yaml) and the tests that decode them strictly into
// the Kubernetes API types and check their wiring. It is a module of its
// own, so that the proxy's module does not depend on the Kubernetes API:
//
//	cd examples/kubernetes && go test ./...
package kubernetes
