#!/usr/bin/env bash
# variants.sh regenerates docs/benchmarks/variants/: the cheapest mix of a
# model's variants on two accelerators (kn-llmd plan variants) for the Azure
# code trace and the Mooncake trace, against each variant alone. Seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
data="${DATA:-../shared/data}"
out="docs/benchmarks/variants"
cd "$root"
v=(--variant h100=llama-3.1-8b-h100:1 --variant a100=llama-3.1-8b-a100:0.45 --batch-fraction 0.3)
go run ./cmd/kn-llmd plan variants --trace "azure:$data/azure/AzureLLMInferenceTrace_code.csv" "${v[@]}" --out "$out/azure-standard"
go run ./cmd/kn-llmd plan variants --trace "azure:$data/azure/AzureLLMInferenceTrace_code.csv" "${v[@]}" --slo-ttft 500ms --slo-tpot 50ms --out "$out/azure-critical"
go run ./cmd/kn-llmd plan variants --trace "mooncake:$data/mooncake/synthetic_trace.jsonl" "${v[@]}" --out "$out/mooncake-standard"
