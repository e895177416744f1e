# llmd-kn developer entry points. `make test` is what CI runs.
SHELL := /usr/bin/env bash
GO ?= go
# How long each fuzz target runs in `make test`: an execution count, not a
# duration, so that a busy machine does the same work (and go test -fuzz
# does not trip over its own deadline).
FUZZTIME ?= 20000x

# The envtest binaries (kube-apiserver, etcd, kubectl) and those the
# end-to-end tier adds, built from Go modules by hack/build-k8s.sh.
K8S_BIN ?= $(CURDIR)/_output/k8s/bin

.PHONY: test verify unit e2e fidelity fuzz build bench bench-datapath chromium k8s k8s-e2e tokenizers

## test: everything CI checks: formatting, vet, unit and integration tests
## (with the race detector), the end-to-end tier, and a short run of every
## fuzz target.
test: chromium verify unit e2e fidelity fuzz

## chromium: the headless browser the status-page test drives (Debian's
## package; the test skips with a message where it cannot be installed).
chromium:
	./hack/install-chromium.sh

## verify: gofmt and go vet must be clean.
verify:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## k8s: kube-apiserver, etcd and kubectl for the tests against a real API
## server, built from Go modules (about 7 minutes cold, seconds when cached).
k8s:
	GO=$(GO) K8S_BIN_DIR=$(K8S_BIN) ./hack/build-k8s.sh

## k8s-e2e: also kube-controller-manager, kube-scheduler, kwok, Knative
## Serving's controller and webhook, and kn, for the end-to-end tier, and
## versitygw (a real S3 server) for the KV store's S3 round trip (built
## once, then cached like the others).
k8s-e2e:
	GO=$(GO) K8S_BIN_DIR=$(K8S_BIN) ./hack/build-k8s.sh all

## e2e: the end-to-end tier (test/e2e): a Knative control plane in a box,
## driven with kn. Without the race detector: the work is in the host
## processes it starts. Must not skip.
e2e: k8s-e2e
	KUBEBUILDER_ASSETS=$(K8S_BIN) LLMD_E2E=1 LLMD_REQUIRE_APISERVER=1 $(GO) test -count=1 -timeout 15m -v ./test/e2e

## tokenizers: the published Llama 3.1 and Qwen 3 tokenizer files and the
## JavaScript reference the tokenizer equality test runs (npm, cached in
## _output/tokenizers). A failed install does not stop `make unit`: the
## test then fails there with the reason.
tokenizers:
	-./hack/install-tokenizers.sh

## unit: all tests, race detector on; the API-server, tokenizer-equality
## and S3 (versitygw) tests must not skip.
unit: k8s-e2e tokenizers
	KUBEBUILDER_ASSETS=$(K8S_BIN) LLMD_REQUIRE_APISERVER=1 LLMD_REQUIRE_TOKENIZERS=1 LLMD_REQUIRE_S3=1 $(GO) test -race -count=1 -timeout 20m ./...

## fidelity: the same workload through `kn-llmd local` + bench (real time) and
## through plan (virtual time) must give the same TTFT distribution at every
## decile (within 15% in value or the quantile's sampling spread in rank,
## test/fidelity/band_test.go) and rank the routing profiles alike. Alone and
## without the race detector, since the simulated pods must keep to their
## time scale (about a minute).
fidelity:
	LLMD_FIDELITY=1 $(GO) test -count=1 -timeout 10m ./test/fidelity

## fuzz: each fuzz target for $(FUZZTIME).
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./hack/fuzz.sh

## build: the binaries, into bin/.
build:
	$(GO) build -o bin/ ./cmd/...

## bench: the benchmarks whose figures docs/benchmarks/ reports.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

## bench-datapath: the data-path figures of docs/benchmarks/datapath.md
## (activator CPU against a bare reverse proxy, interleaved; request
## parsing; metrics parsing; simulator decoding; routing decisions).
bench-datapath:
	$(GO) test -run '^$$' -bench 'ParseRequest|ProxyCPU|ParseVLLMMetrics|ScrapeIdlePods' -benchtime 20x -count 3 -benchmem ./pkg/activator
	$(GO) test -run '^$$' -bench 'DecodeCompletion32kIDs' -benchtime 50x -count 3 -benchmem ./pkg/vllmsim
	$(GO) test -run '^$$' -bench 'Decide|Hash32k|Hash128k' -benchtime 200x -count 2 -benchmem ./pkg/router
	$(GO) test -run '^$$' -bench 'AddedLatency' -benchtime 6x -count 3 ./pkg/activator
