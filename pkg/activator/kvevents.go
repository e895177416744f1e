package activator

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// KV events reach the activator in either direction. vLLM's publisher binds
// (tcp://*:5557) and the activator dials each pod (PodSpec.KVEvents, see
// revision.subscribe); llm-d's publishers dial a collector that binds, which
// the activator can be too (ServeKVEvents), telling the pods apart by the
// topic they publish under (kv@<pod>@<model>, <pod> the pod's name, its
// IP:port as llm-d's publishers write it, or its IP).

// RouterEvents converts decoded vLLM KV events into the router's: every
// medium and adapter goes through, the index tells them apart.
func RouterEvents(evs []kvevents.Event) []router.KVEvent {
	out := make([]router.KVEvent, len(evs))
	for i := range evs {
		e := &evs[i]
		lora := e.LoraName
		if lora == "" && e.HasLoraID {
			// vLLM before lora_name named adapters by id only.
			lora = "lora-id:" + strconv.FormatInt(e.LoraID, 10)
		}
		out[i] = router.KVEvent{Kind: router.KVEventKind(e.Kind), Hashes: e.Hashes,
			Parent: e.Parent, HasParent: e.HasParent, TokenIDs: e.TokenIDs, BlockSize: e.BlockSize,
			Medium: e.Medium, LoraName: lora}
	}
	return out
}

// kvCounts are one pod's KV-event batches, for metrics and the status page.
type kvCounts struct {
	received, decoded, rejected, gaps atomic.Int64
}

// kvStream follows the sequence numbers of one publisher.
type kvStream struct {
	next    uint64
	started bool
}

// applyKV handles one message of pod p's publisher: a gap in sequence
// numbers means lost events, so the pod's index entries are dropped rather
// than trusted; a batch that does not decode is counted and skipped.
func (rev *revision) applyKV(p *pod, st *kvStream, seq uint64, payload []byte) {
	c := &p.kv
	c.received.Add(1)
	if st.started && seq != st.next {
		c.gaps.Add(1)
		rev.rt.Forget(p.spec.Name)
	}
	st.started, st.next = true, seq+1
	b, err := kvevents.DecodeBatch(payload)
	if err != nil {
		c.rejected.Add(1)
		rev.a.opts.Logger.Debug("bad KV event batch", "revision", rev.key.String(), "pod", p.spec.Name, "err", err)
		return
	}
	c.decoded.Add(1)
	if err := rev.rt.Apply(p.spec.Name, RouterEvents(b.Events)...); err != nil {
		rev.a.opts.Logger.Debug("KV events rejected by the index", "revision", rev.key.String(), "pod", p.spec.Name, "err", err)
	}
}

// ServeKVEvents binds a ZMQ SUB socket at endpoint (tcp://*:5557, or
// tcp://host:port) for publishers that connect, and applies what they send
// to the pod their topic names, until ctx ends. Messages from unknown pods
// are counted and dropped. ready, if not nil, receives the bound address.
func (a *Activator) ServeKVEvents(ctx context.Context, endpoint string, ready func(net.Addr)) error {
	if !strings.HasPrefix(endpoint, "tcp://") {
		return fmt.Errorf("kv events bind %q: want a tcp:// endpoint", endpoint)
	}
	sub := zmq4.NewSub(ctx)
	defer sub.Close()
	if err := sub.Listen(endpoint); err != nil {
		return fmt.Errorf("kv events bind %s: %w", endpoint, err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		return err
	}
	log := a.opts.Logger.With("component", "kv-events")
	log.Info("collecting KV events", "bind", sub.Addr().String())
	if ready != nil {
		ready(sub.Addr())
	}
	streams := map[string]*kvStream{}
	for {
		msg, err := sub.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Debug("receive", "err", err)
			if !sleepCtx(ctx, 10*time.Millisecond) {
				return nil
			}
			continue
		}
		topic, seq, payload, err := kvevents.ParseMessage(msg.Frames)
		if err != nil {
			a.kvUnknown.Add(1)
			continue
		}
		rev, p := a.kvPod(topic)
		if p == nil {
			a.kvUnknown.Add(1)
			continue
		}
		key := rev.key.String() + "/" + p.spec.Name
		st := streams[key]
		if st == nil {
			if len(streams) > 1<<16 {
				clear(streams) // bounded: pods come and go
			}
			st = &kvStream{}
			streams[key] = st
		}
		rev.applyKV(p, st, seq, payload)
	}
}

// kvPod finds the pod a topic kv@<pod>@<model> names: by pod name, else by
// the host:port of its URL (llm-d's publishers name themselves
// <pod IP>:<port>), else by the host of its URL when exactly one pod has
// that host (vLLM's kv@<pod IP>@<model>; several pods on one IP, as on
// loopback, are told apart only by name or host:port).
func (a *Activator) kvPod(topic string) (*revision, *pod) {
	parts := strings.Split(topic, "@")
	if len(parts) < 2 || parts[1] == "" {
		return nil, nil
	}
	id := parts[1]
	idHost, idPort, err := net.SplitHostPort(id)
	if err != nil {
		idHost, idPort = strings.Trim(id, "[]"), ""
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	var byAddr, byHost *pod
	var addrRev, hostRev *revision
	hosts := 0
	for _, rev := range a.revs {
		rev.mu.RLock()
		if p := rev.pods[id]; p != nil {
			rev.mu.RUnlock()
			return rev, p
		}
		for _, p := range rev.pods {
			u, err := url.Parse(p.spec.URL)
			if err != nil || u.Hostname() != idHost {
				continue
			}
			if idPort == "" {
				hosts++
				byHost, hostRev = p, rev
				continue
			}
			port := u.Port()
			if port == "" {
				port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
			}
			if port == idPort && byAddr == nil {
				byAddr, addrRev = p, rev
			}
		}
		rev.mu.RUnlock()
	}
	if byAddr != nil {
		return addrRev, byAddr
	}
	if hosts == 1 {
		return hostRev, byHost
	}
	return nil, nil
}

// kvCollector exports the KV-event and precise-index figures of every
// revision and pod at scrape time, so that nothing lingers for pods that are
// gone.
type kvCollector struct{ a *Activator }

var (
	kvBatchesDesc = prometheus.NewDesc("llmd_activator_kv_event_batches_total",
		"KV-event batches from a pod: received, decoded, rejected (undecodable), gaps (lost batches, the pod's index entries dropped).",
		[]string{"revision", "pod", "outcome"}, nil)
	kvBlocksDesc = prometheus.NewDesc("llmd_activator_kv_event_blocks_total",
		"Block announcements in a pod's KV events: stored and removed (applied), unmatched (a stored block whose parent the index never saw, a removed block it never held), rejected (malformed or conflicting).",
		[]string{"revision", "pod", "outcome"}, nil)
	kvHeldDesc = prometheus.NewDesc("llmd_activator_kv_index_pod_blocks",
		"Engine blocks the precise index holds for a pod, by medium.", []string{"revision", "pod", "medium"}, nil)
	kvErrDesc = prometheus.NewDesc("llmd_activator_prefix_prediction_error_tokens",
		"Recent mean absolute error, beyond one block, of each index's predicted cached tokens for a pod against what the pod reported cached.",
		[]string{"revision", "pod", "index"}, nil)
	kvTrustDesc = prometheus.NewDesc("llmd_activator_kv_index_pod_trusted",
		"1 while decisions read the precise index for a pod, 0 while its predictions are persistently wrong and the approximate index stands in.",
		[]string{"revision", "pod"}, nil)
	kvIndexDesc = prometheus.NewDesc("llmd_activator_kv_index_size",
		"Size of a revision's prefix indexes: keys and bytes of the approximate and precise index, engine blocks mapped by the precise one.",
		[]string{"revision", "index", "unit"}, nil)
	kvUnknownDesc = prometheus.NewDesc("llmd_activator_kv_event_unknown_messages_total",
		"Messages at the bound KV-event endpoint from no known pod, or malformed.", nil, nil)
	kvStorageDesc = prometheus.NewDesc("llmd_activator_kv_storage_blocks",
		"Blocks of a KV-offloading revision's shared storage (its manifests) the router knows.", []string{"revision"}, nil)
	kvStoragePollsDesc = prometheus.NewDesc("llmd_activator_kv_storage_polls_total",
		"Reads of a KV-offloading revision's storage manifests, by outcome (ok, failed: the router kept what it knew).",
		[]string{"revision", "outcome"}, nil)
)

func (kvCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{kvBatchesDesc, kvBlocksDesc, kvHeldDesc, kvErrDesc, kvTrustDesc, kvIndexDesc, kvUnknownDesc,
		kvStorageDesc, kvStoragePollsDesc} {
		ch <- d
	}
}

func (c kvCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(kvUnknownDesc, a.kvUnknown.Load())
	a.mu.RLock()
	revs := make([]*revision, 0, len(a.revs))
	for _, rev := range a.revs {
		revs = append(revs, rev)
	}
	a.mu.RUnlock()
	for _, rev := range revs {
		name := rev.key.String()
		st := rev.rt.Stats()
		gauge(kvIndexDesc, float64(st.Approximate.Keys), name, "approximate", "keys")
		gauge(kvIndexDesc, float64(st.Approximate.Bytes), name, "approximate", "bytes")
		gauge(kvIndexDesc, float64(st.Precise.Keys), name, "precise", "keys")
		gauge(kvIndexDesc, float64(st.Precise.Bytes), name, "precise", "bytes")
		gauge(kvIndexDesc, float64(st.PreciseEngineBlocks), name, "precise", "engine_blocks")
		if polls, fails, blocks := rev.storageStatus(); polls > 0 {
			gauge(kvStorageDesc, float64(blocks), name)
			counter(kvStoragePollsDesc, polls-fails, name, "ok")
			counter(kvStoragePollsDesc, fails, name, "failed")
		}
		rev.mu.RLock()
		pods := append([]*pod(nil), rev.list...)
		rev.mu.RUnlock()
		for _, p := range pods {
			pn := p.spec.Name
			counter(kvBatchesDesc, p.kv.received.Load(), name, pn, "received")
			counter(kvBatchesDesc, p.kv.decoded.Load(), name, pn, "decoded")
			counter(kvBatchesDesc, p.kv.rejected.Load(), name, pn, "rejected")
			counter(kvBatchesDesc, p.kv.gaps.Load(), name, pn, "gaps")
			ps := rev.rt.PreciseEndpoint(pn)
			counter(kvBlocksDesc, ps.Stored, name, pn, "stored")
			counter(kvBlocksDesc, ps.Removed, name, pn, "removed")
			counter(kvBlocksDesc, ps.Unmatched, name, pn, "unmatched")
			counter(kvBlocksDesc, ps.Rejected, name, pn, "rejected")
			gauge(kvHeldDesc, float64(ps.GPUBlocks), name, pn, "GPU")
			gauge(kvHeldDesc, float64(ps.CPUBlocks), name, pn, "CPU")
			gauge(kvHeldDesc, float64(ps.DiskBlocks), name, pn, "disk")
			gauge(kvHeldDesc, float64(ps.OtherBlocks), name, pn, "other")
			if ps.Observations > 0 {
				gauge(kvErrDesc, ps.PreciseError, name, pn, "precise")
				if !isInf(ps.ApproxError) {
					gauge(kvErrDesc, ps.ApproxError, name, pn, "approximate")
				}
			}
			trusted := 1.0
			if !ps.Trusted {
				trusted = 0
			}
			gauge(kvTrustDesc, trusted, name, pn)
		}
	}
}

func isInf(f float64) bool { return f > 1e300 }

// observe compares the decision's predictions for its decode pod with the
// cached tokens the pod reported, and says once when the pod's precise
// index falls back to the approximate one (or recovers).
func (rev *revision) observe(d *router.Decision, u *Usage) {
	if u == nil || d.Disaggregated || d.DecodeID == "" || d.PreciseHitTokens < 0 {
		return
	}
	flipped, trusted := rev.rt.Observe(d.DecodeID, router.Observation{
		PreciseHitTokens: d.PreciseHitTokens, ApproxHitTokens: d.ApproxHitTokens, CachedTokens: u.CachedTokens()})
	if !flipped {
		return
	}
	log := rev.a.opts.Logger.With("revision", rev.key.String(), "pod", d.DecodeID)
	if trusted {
		log.Info("precise prefix index agrees with the pod's reported cache hits again: routing on it")
		return
	}
	ps := rev.rt.PreciseEndpoint(d.DecodeID)
	log.Warn("precise prefix index persistently mispredicts the pod's cache hits (tokenizer or chat template differ from the engine's?): routing on the approximate index for this pod",
		"precise_error_tokens", int(ps.PreciseError), "approx_error_tokens", int(ps.ApproxError),
		"blocks_unmatched", ps.Unmatched)
}

// KVEventsStats summarizes a revision's KV events and precise index, for
// the status page.
type KVEventsStats struct {
	// PodsPublishing have sent events; PodsFallback are those whose precise
	// predictions are persistently wrong, routed on the approximate index.
	PodsPublishing int      `json:"podsPublishing"`
	PodsFallback   []string `json:"podsFallback,omitempty"`
	// Batches decoded and rejected; blocks stored and unmatched.
	BatchesDecoded  int64 `json:"batchesDecoded"`
	BatchesRejected int64 `json:"batchesRejected"`
	BlocksStored    int64 `json:"blocksStored"`
	BlocksUnmatched int64 `json:"blocksUnmatched"`
	// IndexKeys is the precise index's size in router blocks.
	IndexKeys int `json:"indexKeys"`
	// Line says it in one line.
	Line string `json:"line"`
}

// kvSummary is the revision's KVEventsStats, nil when no pod publishes.
func (rev *revision) kvSummary() *KVEventsStats {
	var s KVEventsStats
	rev.mu.RLock()
	pods := append([]*pod(nil), rev.list...)
	rev.mu.RUnlock()
	for _, p := range pods {
		ps := rev.rt.PreciseEndpoint(p.spec.Name)
		if !ps.Seen {
			continue
		}
		s.PodsPublishing++
		if !ps.Trusted {
			s.PodsFallback = append(s.PodsFallback, p.spec.Name)
		}
		s.BatchesDecoded += p.kv.decoded.Load()
		s.BatchesRejected += p.kv.rejected.Load()
		s.BlocksStored += ps.Stored
		s.BlocksUnmatched += ps.Unmatched
	}
	if s.PodsPublishing == 0 {
		return nil
	}
	s.IndexKeys = rev.rt.Stats().Precise.Keys
	s.Line = fmt.Sprintf("KV events from %d pods: %d batches (%d rejected), %d blocks stored (%d unmatched), index %d blocks",
		s.PodsPublishing, s.BatchesDecoded, s.BatchesRejected, s.BlocksStored, s.BlocksUnmatched, s.IndexKeys)
	if len(s.PodsFallback) > 0 {
		s.Line += fmt.Sprintf("; precise predictions wrong on %s: routed on the approximate index", strings.Join(s.PodsFallback, ", "))
	}
	return &s
}
