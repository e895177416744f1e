package batch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// IngressOptions configure an Ingress. Zero fields take the defaults named.
type IngressOptions struct {
	Backend Backend
	// Store keeps dedupe records, accepted work and dead letters across
	// restarts (nil: memory only).
	Store *kvstore.Store
	// Sink returns where results go for a request (the Service's
	// llm-d.ai/batch-sink, else K_SINK); "" means the HTTP reply.
	Sink func(*http.Request) string
	// DeadLetterSink receives results the sink would not take after every
	// retry ("" : they are kept in storage under batch/deadletter/).
	DeadLetterSink string
	// Source is the source attribute of result events ("/llmd-kn/activator").
	Source string
	Limits Limits
	Tiers  TierPolicy
	// Retention is how long a result answers duplicates (24 h);
	// MaxEntries bounds the results held in memory (100,000).
	Retention  time.Duration
	MaxEntries int
	// Workers serve accepted (sink) work concurrently (16); Queue bounds
	// the work accepted and not yet started (10,000): past it, 429.
	Workers int
	Queue   int
	// Infer retries transient failures (with a sink: 8 tries from 200 ms,
	// within the request's deadline; replying: 1, Eventing redelivers).
	Infer Retry
	// SinkRetries and SinkBackoff: delivery retries with exponential
	// backoff (5 retries from 200 ms).
	SinkRetries int
	SinkBackoff time.Duration
	// ReplicaID names this process in its event claims (random by
	// default). With a Store shared by replicas, an event is claimed
	// there by the first delivery; the owner renews its claim every
	// ClaimRenew (10 s); a delivery that finds another replica's claim
	// polls storage for the result every ClaimPollMin doubling to
	// ClaimPollMax (200 ms, 1 s) and takes the event over once it has
	// seen the claim unrenewed for ClaimTTL (30 s, longer than
	// ClaimRenew) by its own clock. See claim.go.
	ReplicaID                  string
	ClaimRenew, ClaimTTL       time.Duration
	ClaimPollMin, ClaimPollMax time.Duration
	// HTTPClient sends to sinks (a client with a 30 s timeout).
	HTTPClient *http.Client
	Now        func() time.Time
	Logger     *slog.Logger
}

// Ingress is the CloudEvents endpoint: an http.Handler for events whose
// data is an OpenAI request, with results as replies or sent to a sink.
type Ingress struct {
	opts   IngressOptions
	dedupe *dedupe
	client cloudevents.Client
	jobs   chan job
	wg     sync.WaitGroup
	stop   context.CancelFunc
	ctx    context.Context

	// Counters (exported through Stats).
	accepted, answered, failed, duplicates, delivered, deadLettered, lost atomic.Int64
}

type job struct {
	req    *Request
	origin Origin
	sink   string
}

// NewIngress builds an Ingress and starts its workers; Close stops them.
func NewIngress(opts IngressOptions) (*Ingress, error) {
	if opts.Backend == nil {
		return nil, errors.New("batch: ingress needs a backend")
	}
	if opts.Source == "" {
		opts.Source = "/llmd-kn/activator"
	}
	if opts.Retention <= 0 {
		opts.Retention = 24 * time.Hour
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 100_000
	}
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.Queue <= 0 {
		opts.Queue = 10_000
	}
	if opts.SinkRetries <= 0 {
		opts.SinkRetries = 5
	}
	if opts.SinkBackoff <= 0 {
		opts.SinkBackoff = 200 * time.Millisecond
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Sink == nil {
		opts.Sink = func(*http.Request) string { return "" }
	}
	if opts.ClaimRenew <= 0 {
		opts.ClaimRenew = DefaultClaimRenew
	}
	if opts.ClaimTTL <= 0 {
		opts.ClaimTTL = DefaultClaimTTL
	}
	if opts.ClaimPollMin <= 0 {
		opts.ClaimPollMin = DefaultClaimPollMin
	}
	if opts.ClaimPollMax < opts.ClaimPollMin {
		opts.ClaimPollMax = max(DefaultClaimPollMax, opts.ClaimPollMin)
	}
	if opts.ClaimTTL <= opts.ClaimRenew {
		return nil, fmt.Errorf("batch: claim TTL %v must be longer than its renew interval %v", opts.ClaimTTL, opts.ClaimRenew)
	}
	c, err := cloudevents.NewClientHTTP(cehttp.WithClient(*opts.HTTPClient))
	if err != nil {
		return nil, fmt.Errorf("batch: CloudEvents client: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	d := newDedupe(opts.MaxEntries, opts.Retention, opts.Store, opts.Now)
	if opts.ReplicaID != "" {
		d.id = opts.ReplicaID
	}
	d.renew, d.ttl, d.pollMin, d.pollMax, d.log = opts.ClaimRenew, opts.ClaimTTL, opts.ClaimPollMin, opts.ClaimPollMax, opts.Logger
	in := &Ingress{opts: opts, client: c, jobs: make(chan job, opts.Queue), ctx: ctx, stop: stop, dedupe: d}
	for i := 0; i < opts.Workers; i++ {
		in.wg.Add(1)
		go in.worker()
	}
	return in, nil
}

// Close stops the workers; accepted work still queued stays in storage
// (when configured) and Resume picks it up in the next process.
func (in *Ingress) Close() {
	in.stop()
	in.wg.Wait()
}

// Resume queues the work a previous process accepted and did not finish.
func (in *Ingress) Resume(ctx context.Context) (int, error) {
	recs, err := in.dedupe.pending(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, rec := range recs {
		var ev event.Event
		if json.Unmarshal(rec.Request, &ev) != nil {
			continue
		}
		rq, derr := decodeEvent(ev)
		if derr != nil {
			continue
		}
		select {
		case in.jobs <- job{req: rq, origin: rec.Origin, sink: rec.Sink}:
			n++
		default:
			return n, errors.New("batch: queue full while resuming")
		}
	}
	return n, nil
}

// IngressStats counts what the ingress did.
type IngressStats struct {
	Accepted, Answered, Failed, Duplicates, Delivered, DeadLettered, Lost int64
}

// Stats returns the counters.
func (in *Ingress) Stats() IngressStats {
	return IngressStats{in.accepted.Load(), in.answered.Load(), in.failed.Load(), in.duplicates.Load(),
		in.delivered.Load(), in.deadLettered.Load(), in.lost.Load()}
}

// ServeHTTP takes the events of one request.
func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqs, mode, err := Decode(r, in.opts.Limits)
	sink := in.opts.Sink(r)
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) {
			de = &DecodeError{Msg: err.Error()}
		}
		if sink != "" {
			// The sender hears 400; whoever reads the sink hears it too.
			ev := in.errorEvent(de.ID, de.Source, ReasonMalformed, de.Msg, nil)
			go in.deliver(in.ctx, ev, sink)
		}
		writeJSONError(w, http.StatusBadRequest, de.Error())
		return
	}
	origin := OriginOf(r)
	if sink != "" {
		in.accept(w, r, reqs, origin, sink)
		return
	}
	in.reply(w, r, reqs, mode, origin)
}

// accept queues the events for the workers and answers 202 at once, so
// Eventing's delivery timeout is not the inference time.
func (in *Ingress) accept(w http.ResponseWriter, r *http.Request, reqs []*Request, o Origin, sink string) {
	for _, rq := range reqs {
		raw, _ := json.Marshal(rq.Event)
		if err := in.dedupe.savePending(r.Context(), rq.Key(), record{Request: raw, Origin: o, Sink: sink}); err != nil {
			writeJSONError(w, http.StatusServiceUnavailable, "storage: "+err.Error())
			return
		}
		select {
		case in.jobs <- job{req: rq, origin: o, sink: sink}:
			in.accepted.Add(1)
		default:
			w.Header().Set("Retry-After", "10")
			writeJSONError(w, http.StatusTooManyRequests, "batch queue full: retry later")
			return
		}
	}
	w.WriteHeader(http.StatusAccepted)
}

func (in *Ingress) worker() {
	defer in.wg.Done()
	for {
		select {
		case <-in.ctx.Done():
			return
		case j := <-in.jobs:
			in.runJob(j)
		}
	}
}

func (in *Ingress) runJob(j job) {
	retry := in.opts.Infer
	if retry.Attempts <= 0 {
		retry.Attempts = 8
	}
	ev, ok, remote := in.process(in.ctx, j.req, j.origin, retry, true)
	if !ok {
		return // shutting down: the pending record resumes it
	}
	if remote {
		return // the replica that inferred it delivers it and stores the result
	}
	in.deliver(in.ctx, ev, j.sink)
	if in.opts.Store != nil {
		raw, _ := json.Marshal(ev)
		if err := in.dedupe.save(in.ctx, j.req.Key(), record{At: in.opts.Now(), Result: raw}); err != nil {
			in.opts.Logger.Warn("batch: storing a delivered result", "err", err)
		}
	}
}

// reply answers the events in the HTTP response (Eventing's reply
// contract): one event in the request's mode, or a batch for a batch. A
// transient failure answers 503 (or 429) with the error event, so Eventing
// redelivers; results already computed answer the redelivery from dedupe.
func (in *Ingress) reply(w http.ResponseWriter, r *http.Request, reqs []*Request, mode Mode, o Origin) {
	retry := in.opts.Infer
	if retry.Attempts <= 0 {
		retry.Attempts = 1
	}
	out := make([]event.Event, len(reqs))
	transient := make([]bool, len(reqs))
	sem := make(chan struct{}, in.opts.Workers)
	var wg sync.WaitGroup
	for i, rq := range reqs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ev, ok, _ := in.process(r.Context(), rq, o, retry, false)
			if !ok {
				transient[i] = true
			}
			out[i] = ev
		}()
	}
	wg.Wait()
	status := http.StatusOK
	for _, t := range transient {
		if t {
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", "1")
		}
	}
	switch mode {
	case ModeBatched:
		w.Header().Set("Content-Type", event.ApplicationCloudEventsBatchJSON)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(out)
	case ModeStructured:
		w.Header().Set("Content-Type", event.ApplicationCloudEventsJSON)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(out[0])
	default:
		_ = cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(&out[0]), status, w)
	}
}

// process computes (or recalls) the result event of one request. It
// returns false when no final result came: a transient failure the caller
// should let the sender retry (reply mode) or the process is stopping.
// remote: another replica computed the result (and delivers it to a sink).
func (in *Ingress) process(ctx context.Context, rq *Request, o Origin, retry Retry, final bool) (ev event.Event, ok, remote bool) {
	for {
		e, r := in.dedupe.begin(ctx, rq.Key())
		if r == roleWait {
			select {
			case <-e.done:
			case <-ctx.Done():
				return event.Event{}, false, false
			}
			if e.result != nil {
				in.duplicates.Add(1)
				return *e.result, true, e.remote
			}
			continue // the first delivery gave up: try ourselves
		}
		if r == roleRemote {
			// Another replica infers it (and, with a sink, delivers it).
			done, owner := in.dedupe.await(ctx, e)
			if done {
				in.duplicates.Add(1)
				return *e.result, true, true
			}
			if !owner {
				in.dedupe.abandon(e)
				return event.Event{}, false, false
			}
		}
		out := in.run(ctx, rq, o, retry)
		// The caller went away (not the request's own deadline), or a
		// replying caller met a transient failure: nothing final to keep.
		gaveUp := ctx.Err() != nil && (rq.Deadline.IsZero() || in.opts.Now().Before(rq.Deadline))
		if gaveUp || out.Transient && !final {
			in.dedupe.abandon(e)
			return in.resultEvent(rq, out), false, false
		}
		ev = in.resultEvent(rq, out)
		if err := in.dedupe.finish(ctx, e, ev); err != nil {
			in.opts.Logger.Warn("batch: storing a result", "err", err)
		}
		if out.OK() {
			in.answered.Add(1)
		} else {
			in.failed.Add(1)
		}
		return ev, true, false
	}
}

func (in *Ingress) run(ctx context.Context, rq *Request, o Origin, retry Retry) Outcome {
	tier, err := in.opts.Tiers.Resolve(rq.Tier)
	if err != nil {
		return Outcome{Reason: ReasonTierNotAllowed, Message: err.Error()}
	}
	if !rq.Deadline.IsZero() {
		if !in.opts.Now().Before(rq.Deadline) {
			return Outcome{Reason: ReasonDeadlineExceeded, Message: "the deadline had passed on arrival"}
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, rq.Deadline)
		defer cancel()
	}
	body := make(map[string]json.RawMessage, len(rq.Body))
	for k, v := range rq.Body {
		body[k] = v
	}
	return infer(ctx, in.opts.Backend, rq.Path, body, tier, o, retry)
}

// resultID is a result event's id: derived from the request's source and
// id, so a result delivered twice is recognisably the same event.
func resultID(source, id string) string {
	h := sha256.Sum256([]byte(source + "\x00" + id))
	return "llmd-" + hex.EncodeToString(h[:12])
}

func (in *Ingress) resultEvent(rq *Request, o Outcome) event.Event {
	if !o.OK() {
		return in.errorEvent(rq.Event.ID(), rq.Event.Source(), o.Reason, o.Message, o)
	}
	ev := event.New()
	ev.SetID(resultID(rq.Event.Source(), rq.Event.ID()))
	ev.SetType(TypeResponse)
	ev.SetSource(in.opts.Source)
	ev.SetSubject(rq.Event.ID())
	ev.SetTime(in.opts.Now())
	ev.SetExtension(ExtRequestSource, rq.Event.Source())
	_ = ev.SetData(event.ApplicationJSON, json.RawMessage(o.Body))
	return ev
}

// ErrorData is the data of an ai.llm-d.inference.error.v1 event.
type ErrorData struct {
	Reason  string          `json:"reason"`
	Message string          `json:"message"`
	Status  int             `json:"status,omitempty"`
	Error   json.RawMessage `json:"error,omitempty"` // the backend's error body, if any
}

func (in *Ingress) errorEvent(id, source, reason, msg string, o any) event.Event {
	ev := event.New()
	ev.SetType(TypeError)
	ev.SetSource(in.opts.Source)
	ev.SetTime(in.opts.Now())
	if id != "" {
		ev.SetID(resultID(source, id))
		ev.SetSubject(id)
		ev.SetExtension(ExtRequestSource, source)
	} else {
		ev.SetID(resultID("malformed", strconv.FormatInt(in.opts.Now().UnixNano(), 10)))
	}
	d := ErrorData{Reason: reason, Message: msg}
	if out, ok := o.(Outcome); ok {
		d.Status = out.Status
		if len(out.Body) > 0 {
			d.Error = out.Body
		}
	}
	_ = ev.SetData(event.ApplicationJSON, d)
	return ev
}

// deliver sends a result to the sink with exponential backoff; what the
// sink will not take goes to the dead-letter sink, and what that will not
// take stays in storage. Nothing is dropped silently.
func (in *Ingress) deliver(ctx context.Context, ev event.Event, sink string) {
	err := in.send(ctx, ev, sink)
	if err == nil {
		in.delivered.Add(1)
		return
	}
	in.opts.Logger.Warn("batch: sink refused a result", "sink", sink, "event", ev.ID(), "err", err)
	ev.SetExtension(ExtDeliveryError, err.Error())
	if dls := in.opts.DeadLetterSink; dls != "" {
		if err2 := in.send(ctx, ev, dls); err2 == nil {
			in.deadLettered.Add(1)
			return
		} else {
			in.opts.Logger.Warn("batch: dead-letter sink refused a result", "event", ev.ID(), "err", err2)
		}
	}
	if in.opts.Store != nil {
		raw, _ := json.Marshal(ev)
		if err := in.opts.Store.Put(context.WithoutCancel(ctx), "batch/deadletter/"+ev.ID(), raw); err == nil {
			in.deadLettered.Add(1)
			return
		}
	}
	in.lost.Add(1)
	in.opts.Logger.Error("batch: result undeliverable and no storage to keep it", "event", ev.ID())
}

func (in *Ingress) send(ctx context.Context, ev event.Event, target string) error {
	ctx = cloudevents.ContextWithTarget(ctx, target)
	ctx = cloudevents.ContextWithRetriesExponentialBackoff(ctx, in.opts.SinkBackoff, in.opts.SinkRetries)
	res := in.client.Send(ctx, ev)
	if cloudevents.IsACK(res) {
		return nil
	}
	return res
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": http.StatusText(status), "code": status}})
}
