package plan

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// The published traces live beside the repository (see
// ../shared/data/README.md); the benchmarks skip without them.
const dataDir = "../../../shared/data"

func openTrace(b *testing.B, kind, rel string) *workload.Workload {
	b.Helper()
	path := filepath.Join(dataDir, rel)
	if _, err := os.Stat(path); err != nil {
		b.Skipf("trace not available: %v", err)
	}
	w, err := workload.Open(workload.Spec{Kind: kind, Path: path}, ".")
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// benchTrace replays a whole trace on 8 engines per iteration and reports
// how many seconds of virtual time one second of wall time covers.
func benchTrace(b *testing.B, w *workload.Workload, routing string) {
	cfg := DefaultConfig()
	cfg.Engines = 8
	cfg.Routing = routing
	b.ReportAllocs()
	var res *Result
	for b.Loop() {
		var err error
		if res, err = Run(context.Background(), cfg, w.Source()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(res.Stats.End.Seconds(), "virtual-s")
	b.ReportMetric(res.Stats.End.Seconds()*float64(b.N)/b.Elapsed().Seconds(), "virtual-s/wall-s")
	b.ReportMetric(float64(res.Stats.Events), "events")
}

// BenchmarkAzureCodeHour is the target: the Azure code trace (57
// minutes, 8,819 requests) on 8 Llama-3.1-8B engines in well under two
// minutes.
func BenchmarkAzureCodeHour(b *testing.B) {
	w := openTrace(b, workload.KindAzure, "azure/AzureLLMInferenceTrace_code.csv")
	for _, routing := range []string{"round-robin", "default"} {
		b.Run(routing, func(b *testing.B) { benchTrace(b, w, routing) })
	}
}

// BenchmarkMooncake replays the Mooncake synthetic trace (17 minutes, 3,993
// requests of 15,000 prompt tokens on average) at its own timestamps.
func BenchmarkMooncake(b *testing.B) {
	w := openTrace(b, workload.KindMooncake, "mooncake/synthetic_trace.jsonl")
	for _, routing := range []string{"round-robin", "default"} {
		b.Run(routing, func(b *testing.B) { benchTrace(b, w, routing) })
	}
}

// BenchmarkMooncakeTiers is BenchmarkMooncake's default routing with a
// 64 GiB CPU and a 200 GiB disk KV tier per engine (docs/benchmarks/kv-tiers.md).
func BenchmarkMooncakeTiers(b *testing.B) {
	w := openTrace(b, workload.KindMooncake, "mooncake/synthetic_trace.jsonl")
	cfg := DefaultConfig()
	cfg.Engines = 4
	cfg.Routing = "default"
	cfg.Engine.CPUTierBytes, cfg.Engine.DiskTierBytes = 64<<30, 200<<30
	b.ReportAllocs()
	var res *Result
	for b.Loop() {
		var err error
		if res, err = Run(context.Background(), cfg, w.Source()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(res.Stats.End.Seconds()*float64(b.N)/b.Elapsed().Seconds(), "virtual-s/wall-s")
}
