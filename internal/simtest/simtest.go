// Package simtest starts simulated vLLM servers (pkg/vllmsim) on loopback
// for tests. It is test support only.
package simtest

import (
	"context"
	"net"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// Start serves a simulator of model, with the default engine profile at
// time scale 0.01, on a free loopback port until the test ends, and returns
// it with its address (host:port).
func Start(t testing.TB, model string) (*vllmsim.Server, string) {
	t.Helper()
	p, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vllmsim.New(vllmsim.Config{Model: model, Profile: p, TimeScale: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); _ = srv.Close() })
	return srv, ln.Addr().String()
}
