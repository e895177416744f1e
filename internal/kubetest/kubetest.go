// Package kubetest finds what tests against a real API server need: the
// kube-apiserver, etcd and kubectl binaries that hack/build-k8s.sh builds
// from Go modules, the repository root, and module directories in the Go
// module cache (for Knative's CRDs). Tests skip, with a message naming
// hack/build-k8s.sh, when the binaries are absent, unless
// LLMD_REQUIRE_APISERVER=1 (as `make test` sets) makes that a failure.
//
// It is test support only; it imports nothing of llmd-kn.
package kubetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireEnv, set to 1, turns a missing binary into a test failure.
const RequireEnv = "LLMD_REQUIRE_APISERVER"

// RepoRoot is the directory of the go.mod above the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Assets returns the directory holding kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS if set, else _output/k8s/bin in the repository.
func Assets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "_output", "k8s", "bin")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s not found in %s: run hack/build-k8s.sh to build kube-apiserver and etcd from Go modules", b, dir)
		}
	}
	return dir, nil
}

// AssetsOrSkip is Assets for a test: it skips (or, with
// LLMD_REQUIRE_APISERVER=1, fails) when the binaries are absent.
func AssetsOrSkip(tb testing.TB) string {
	tb.Helper()
	dir, err := Assets()
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatal(err)
		}
		tb.Skip(err)
	}
	return dir
}

// ModuleDir is where the Go module cache holds module path at the version
// the main module requires.
func ModuleDir(path string) (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go list -m %s: %v: %s", path, err, ee.Stderr)
		}
		return "", fmt.Errorf("go list -m %s: %w", path, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("module %s is not in the module cache (go mod download %s)", path, path)
	}
	return dir, nil
}

// ServingCRDs returns the paths of Knative Serving's CRD manifests of the
// given resources (file names under config/core/300-resources without
// .yaml, e.g. "revision", "podautoscaler") in the module cache, at the
// version the main module requires.
func ServingCRDs(resources ...string) ([]string, error) {
	serving, err := ModuleDir("knative.dev/serving")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(serving, "config", "core", "300-resources")
	paths := make([]string, len(resources))
	for i, r := range resources {
		paths[i] = filepath.Join(dir, r+".yaml")
		if _, err := os.Stat(paths[i]); err != nil {
			return nil, fmt.Errorf("Knative Serving CRD %q: %w", r, err)
		}
	}
	return paths, nil
}

// EventingCRDs returns the paths of Knative Eventing's CRD manifests of the
// given resources (file names under config/core/resources without .yaml,
// e.g. "broker", "trigger") in the module cache, at the version the main
// module requires.
func EventingCRDs(resources ...string) ([]string, error) {
	eventing, err := ModuleDir("knative.dev/eventing")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(eventing, "config", "core", "resources")
	paths := make([]string, len(resources))
	for i, r := range resources {
		paths[i] = filepath.Join(dir, r+".yaml")
		if _, err := os.Stat(paths[i]); err != nil {
			return nil, fmt.Errorf("Knative Eventing CRD %q: %w", r, err)
		}
	}
	return paths, nil
}
