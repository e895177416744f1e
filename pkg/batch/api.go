package batch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// APIOptions configure the Batch API. Zero fields take the defaults named.
type APIOptions struct {
	Backend Backend
	// Store keeps files, batch state and results (required: a directory
	// locally, a bucket in a cluster; mem:// only for throwaway runs).
	Store *kvstore.Store
	Tiers TierPolicy
	// MaxFileBytes bounds an uploaded file (100 MiB, and at most the
	// store's object limit); MaxLines the lines of a batch (50,000).
	MaxFileBytes int64
	MaxLines     int
	// Concurrency is how many lines of one batch are in flight at once
	// (DefaultBatchConcurrency): the activator's batch tier holds them
	// while interactive tiers need the pods, so this only bounds what
	// waits in its queue, and what batch work can fill when they do not.
	Concurrency int
	// FlushEvery commits results after this many lines (64) or this long
	// (FlushInterval, 1 s), whichever comes first: a restart redoes at
	// most that much.
	FlushEvery    int
	FlushInterval time.Duration
	// Retry for transient failures (until the completion window closes).
	Retry Retry
	// LeaseRenew is how often the replica that runs a batch renews its
	// ownership in storage (DefaultLeaseRenew); LeaseTTL how long another
	// replica must see a lease unrenewed before it takes the batch over
	// (DefaultLeaseTTL; more than LeaseRenew). See lease.go.
	LeaseRenew, LeaseTTL time.Duration
	// ReplicaID names this process in its leases (random by default).
	ReplicaID string
	Now       func() time.Time
	Logger    *slog.Logger
}

// API serves OpenAI's /v1/files and /v1/batches.
type API struct {
	opts APIOptions
	mux  *http.ServeMux

	mu      sync.Mutex
	batches map[string]*run
	seen    map[string]observation // leases of batches run elsewhere
	ctx     context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup

	scanning   sync.Once
	crashed    atomic.Bool // tests: stop as a crash would (no release, no commit)
	pauseRenew atomic.Bool // tests: a replica whose renewals stall
}

// run is one batch in this process.
type run struct {
	id     string
	mu     sync.Mutex
	st     stored
	cancel context.CancelFunc // stops its workers (nil when not running)
	done   chan struct{}
	// The lease epoch this process runs it under, the heartbeats written,
	// and whether a higher epoch was seen (then it writes nothing more).
	epoch      int64
	beats      uint64
	superseded bool
}

func (r *run) snapshot() BatchObject {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Batch
}

// DefaultBatchConcurrency is APIOptions.Concurrency's default: vLLM's
// max-num-seqs, one engine's running batch. The batch soak
// (docs/benchmarks/batch-soak.md) measured 32 lines in flight using under
// half of the capacity interactive traffic left idle: the engines had room
// the batch front did not fill.
const DefaultBatchConcurrency = 256

// NewAPI builds the Batch API and loads the batches already in storage;
// Resume restarts those that were running.
func NewAPI(ctx context.Context, opts APIOptions) (*API, error) {
	if opts.Backend == nil || opts.Store == nil {
		return nil, errors.New("batch: the Batch API needs a backend and a store")
	}
	if opts.MaxFileBytes <= 0 {
		opts.MaxFileBytes = 100 << 20
	}
	opts.MaxFileBytes = min(opts.MaxFileBytes, opts.Store.MaxObjectBytes())
	if opts.MaxLines <= 0 {
		opts.MaxLines = 50_000
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultBatchConcurrency
	}
	if opts.FlushEvery <= 0 {
		opts.FlushEvery = 64
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.Retry.Attempts <= 0 {
		opts.Retry.Attempts = 1 << 20 // until the window closes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LeaseRenew <= 0 {
		opts.LeaseRenew = DefaultLeaseRenew
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if opts.LeaseTTL <= opts.LeaseRenew {
		return nil, fmt.Errorf("batch: lease TTL %v must be longer than its renew interval %v", opts.LeaseTTL, opts.LeaseRenew)
	}
	if opts.ReplicaID == "" {
		opts.ReplicaID = newID("replica-")
	}
	bctx, stop := context.WithCancel(context.Background())
	a := &API{opts: opts, batches: map[string]*run{}, seen: map[string]observation{}, ctx: bctx, stop: stop}
	objs, err := opts.Store.List(ctx, "batch/batches/", 0)
	if err != nil {
		stop()
		return nil, fmt.Errorf("batch: loading batches: %w", err)
	}
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, "/state") {
			continue
		}
		raw, err := opts.Store.Get(ctx, o.Key)
		if err != nil {
			opts.Logger.Warn("batch: unreadable batch state", "key", o.Key, "err", err)
			continue
		}
		var st stored
		if err := json.Unmarshal(raw, &st); err != nil {
			opts.Logger.Warn("batch: unreadable batch state", "key", o.Key, "err", err)
			continue
		}
		if !validID(st.Batch.ID, "batch_") || o.Key != batchKey(st.Batch.ID, "state") {
			opts.Logger.Warn("batch: batch state under another id, ignored", "key", o.Key, "id", st.Batch.ID)
			continue
		}
		a.batches[st.Batch.ID] = &run{id: st.Batch.ID, st: st}
		if Terminal(st.Batch.Status) {
			a.seen[st.Batch.ID] = observation{terminal: true}
		}
	}
	if err := a.backfillIndex(ctx); err != nil {
		stop()
		return nil, err
	}
	a.mux = http.NewServeMux()
	a.mux.HandleFunc("POST /v1/files", a.uploadFile)
	a.mux.HandleFunc("GET /v1/files/{id}", a.getFile)
	a.mux.HandleFunc("GET /v1/files/{id}/content", a.fileContent)
	a.mux.HandleFunc("POST /v1/batches", a.createBatch)
	a.mux.HandleFunc("GET /v1/batches", a.listBatches)
	a.mux.HandleFunc("GET /v1/batches/{id}", a.getBatch)
	a.mux.HandleFunc("POST /v1/batches/{id}/cancel", a.cancelBatch)
	return a, nil
}

// ServeHTTP serves the API's routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Resume makes this process one of the replicas that run batches: it
// takes over at once the unfinished batches nobody holds (their runner
// stopped gracefully, or never had a lease) and returns how many, then
// every LeaseRenew takes over those whose lease expired (lease.go).
// Lines whose results were committed are not sent again.
func (a *API) Resume() int {
	n := a.scan(a.ctx)
	a.scanning.Do(func() {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			tick := time.NewTicker(a.opts.LeaseRenew)
			defer tick.Stop()
			for {
				select {
				case <-a.ctx.Done():
					return
				case <-tick.C:
					a.scan(a.ctx)
				}
			}
		}()
	})
	return n
}

// Close stops every running batch where it is; committed results stay.
func (a *API) Close() {
	a.stop()
	a.wg.Wait()
}

// Wait blocks until a batch's runner has stopped (tests and the CLI's
// embedded mode).
func (a *API) Wait(id string) {
	a.mu.Lock()
	r := a.batches[id]
	a.mu.Unlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	if done != nil {
		<-done
	}
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func validID(id, prefix string) bool {
	rest, ok := strings.CutPrefix(id, prefix)
	if !ok || len(rest) == 0 || len(rest) > 64 {
		return false
	}
	for _, c := range rest {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func fileKey(id, part string) string { return "batch/files/" + id + "/" + part }

func batchKey(id, part string) string { return "batch/batches/" + id + "/" + part }

// The list index: one empty object per batch, named by its creation time
// and id, so GET /v1/batches lists keys, not every batch's chunks.
const indexPrefix = "batch/index/"

func indexKey(created int64, id string) string {
	return fmt.Sprintf("%s%012d_%s", indexPrefix, max(created, 0), id)
}

// parseIndexKey reads an index key back; ok is false for anything else
// (a stray object is skipped, never trusted).
func parseIndexKey(key string) (created int64, id string, ok bool) {
	rest, found := strings.CutPrefix(key, indexPrefix)
	if !found || len(rest) < 14 || rest[12] != '_' {
		return 0, "", false
	}
	for _, c := range rest[:12] {
		if c < '0' || c > '9' {
			return 0, "", false
		}
	}
	created, _ = strconv.ParseInt(rest[:12], 10, 64)
	if !validID(rest[13:], "batch_") {
		return 0, "", false
	}
	return created, rest[13:], true
}

// backfillIndex indexes the batches stored before the index existed.
func (a *API) backfillIndex(ctx context.Context) error {
	objs, err := a.opts.Store.List(ctx, indexPrefix, 0)
	if err != nil {
		return fmt.Errorf("batch: listing the batch index: %w", err)
	}
	have := map[string]bool{}
	for _, o := range objs {
		if _, id, ok := parseIndexKey(o.Key); ok {
			have[id] = true
		}
	}
	for id, rn := range a.batches {
		if !have[id] {
			if err := a.opts.Store.Put(ctx, indexKey(rn.st.Batch.CreatedAt, id), nil); err != nil {
				return fmt.Errorf("batch: indexing %s: %w", id, err)
			}
		}
	}
	return nil
}

// cancelMarker is the object any replica writes (create-if-absent) to ask
// a batch's runner, wherever it runs, to cancel it.
type cancelMarker struct {
	At int64 `json:"at"`
}

// parseCancelMarker validates a stored cancel request: outside input.
func parseCancelMarker(raw []byte) (cancelMarker, error) {
	var m cancelMarker
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, fmt.Errorf("cancel request: %w", err)
	}
	if m.At <= 0 {
		return m, fmt.Errorf("cancel request: at %d", m.At)
	}
	return m, nil
}

// cancelRequested reads a batch's cancel request: nil when there is none
// (or it is unreadable: logged, treated as absent).
func (a *API) cancelRequested(ctx context.Context, id string) (*cancelMarker, error) {
	raw, err := a.opts.Store.Get(ctx, batchKey(id, "cancel"))
	if errors.Is(err, kvstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil && !errors.Is(err, kvstore.ErrCorrupt) {
		return nil, err
	}
	m, perr := parseCancelMarker(raw)
	if err != nil || perr != nil {
		a.opts.Logger.Warn("batch: unreadable cancel request, ignored", "batch", id, "err", errors.Join(err, perr))
		return nil, nil
	}
	return &m, nil
}

// requestCancel records a cancel request in storage (the first one wins).
func (a *API) requestCancel(ctx context.Context, id string, at int64) error {
	raw, _ := json.Marshal(cancelMarker{At: at})
	err := a.opts.Store.PutIfAbsent(context.WithoutCancel(ctx), batchKey(id, "cancel"), raw)
	if errors.Is(err, kvstore.ErrExists) {
		return nil
	}
	return err
}

// running reports whether this process runs the batch now.
func (r *run) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cancel != nil
}

// view is a batch as clients see it: this process's own state while it
// runs the batch, else what storage holds (the state its runner saved at
// its last commit, wherever it runs), with a recorded cancel request.
func (a *API) view(ctx context.Context, id string) (BatchObject, error) {
	if !validID(id, "batch_") {
		return BatchObject{}, kvstore.ErrNotFound
	}
	a.mu.Lock()
	rn := a.batches[id]
	a.mu.Unlock()
	if rn != nil && rn.running() {
		return rn.snapshot(), nil
	}
	st, err := a.load(ctx, id)
	if err != nil {
		return BatchObject{}, err
	}
	b := st.Batch
	if !Terminal(b.Status) && b.Status != StatusCancelling {
		m, err := a.cancelRequested(ctx, id)
		if err != nil {
			return BatchObject{}, err
		}
		if m != nil {
			at := m.At
			b.Status, b.CancellingAt = StatusCancelling, &at
		}
	}
	return b, nil
}

// load reads a batch's stored state.
func (a *API) load(ctx context.Context, id string) (stored, error) {
	var st stored
	raw, err := a.opts.Store.Get(ctx, batchKey(id, "state"))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("batch %s: stored state: %w", id, err)
	}
	if st.Batch.ID != id {
		return st, fmt.Errorf("batch %s: stored state names %q", id, st.Batch.ID)
	}
	if Terminal(st.Batch.Status) {
		return st, nil
	}
	// The terminal state is created once, before the state is rewritten
	// with it: it wins over a state a superseded runner wrote late.
	raw, err = a.opts.Store.Get(ctx, batchKey(id, "final"))
	if errors.Is(err, kvstore.ErrNotFound) {
		return st, nil
	}
	if err != nil && !errors.Is(err, kvstore.ErrCorrupt) {
		return st, err
	}
	var fin stored
	if err == nil {
		err = json.Unmarshal(raw, &fin)
	}
	if err != nil || fin.Batch.ID != id || !Terminal(fin.Batch.Status) {
		a.opts.Logger.Warn("batch: unreadable final state, ignored", "batch", id, "err", err)
		return st, nil
	}
	return fin, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, param, msg string) {
	typ := "invalid_request_error"
	if status >= 500 {
		typ = "server_error"
	}
	var p any
	if param != "" {
		p = param
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": p, "code": nil}})
}

// putFile stores a file: content first, then its metadata (the commit).
func (a *API) putFile(ctx context.Context, f FileObject, content []byte) error {
	if err := a.opts.Store.Put(ctx, fileKey(f.ID, "content"), content); err != nil {
		return err
	}
	raw, _ := json.Marshal(f)
	return a.opts.Store.Put(ctx, fileKey(f.ID, "meta"), raw)
}

func (a *API) loadFile(ctx context.Context, id string) (FileObject, error) {
	var f FileObject
	if !validID(id, "file-") {
		return f, kvstore.ErrNotFound
	}
	raw, err := a.opts.Store.Get(ctx, fileKey(id, "meta"))
	if err != nil {
		return f, err
	}
	err = json.Unmarshal(raw, &f)
	return f, err
}

func (a *API) uploadFile(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, a.opts.MaxFileBytes+1<<20)
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		apiError(w, http.StatusBadRequest, "", "upload a file as multipart/form-data with fields purpose and file")
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		apiError(w, http.StatusBadRequest, "", err.Error())
		return
	}
	var purpose, filename string
	var content []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			apiError(w, http.StatusBadRequest, "", "reading the upload: "+err.Error())
			return
		}
		switch p.FormName() {
		case "purpose":
			b, _ := io.ReadAll(io.LimitReader(p, 64))
			purpose = strings.TrimSpace(string(b))
		case "file":
			filename = p.FileName()
			content, err = io.ReadAll(io.LimitReader(p, a.opts.MaxFileBytes+1))
			if err != nil {
				apiError(w, http.StatusBadRequest, "file", "reading the file: "+err.Error())
				return
			}
			if int64(len(content)) > a.opts.MaxFileBytes {
				apiError(w, http.StatusRequestEntityTooLarge, "file", fmt.Sprintf("file over the limit of %d bytes", a.opts.MaxFileBytes))
				return
			}
		}
	}
	if purpose != "batch" {
		apiError(w, http.StatusBadRequest, "purpose", fmt.Sprintf("purpose %q: this server takes batch input files (purpose batch)", purpose))
		return
	}
	if content == nil {
		apiError(w, http.StatusBadRequest, "file", "file: required")
		return
	}
	if filename == "" {
		filename = "input.jsonl"
	}
	f := FileObject{ID: newID("file-"), Object: "file", Bytes: int64(len(content)), CreatedAt: a.opts.Now().Unix(),
		Filename: filename, Purpose: purpose, Status: "processed"}
	if err := a.putFile(r.Context(), f, content); err != nil {
		apiError(w, http.StatusInternalServerError, "", "storing the file: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, f)
}

func (a *API) getFile(w http.ResponseWriter, r *http.Request) {
	f, err := a.loadFile(r.Context(), r.PathValue("id"))
	if err != nil {
		a.storeError(w, "file", r.PathValue("id"), err)
		return
	}
	writeJSON(w, http.StatusOK, f)
}

func (a *API) fileContent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := a.loadFile(r.Context(), id); err != nil {
		a.storeError(w, "file", id, err)
		return
	}
	b, err := a.opts.Store.Get(r.Context(), fileKey(id, "content"))
	if err != nil {
		a.storeError(w, "file", id, err)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}

func (a *API) storeError(w http.ResponseWriter, what, id string, err error) {
	if errors.Is(err, kvstore.ErrNotFound) {
		apiError(w, http.StatusNotFound, "", fmt.Sprintf("no %s with id %q", what, id))
		return
	}
	apiError(w, http.StatusInternalServerError, "", fmt.Sprintf("%s %s: %v", what, id, err))
}

type createRequest struct {
	InputFileID      string            `json:"input_file_id"`
	Endpoint         string            `json:"endpoint"`
	CompletionWindow string            `json:"completion_window"`
	Metadata         map[string]string `json:"metadata"`
}

func (a *API) createBatch(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	if err := dec.Decode(&req); err != nil {
		apiError(w, http.StatusBadRequest, "", "body: "+err.Error())
		return
	}
	if req.Endpoint != PathChat && req.Endpoint != PathCompletion {
		apiError(w, http.StatusBadRequest, "endpoint", fmt.Sprintf("endpoint %q: supported are %s and %s", req.Endpoint, PathChat, PathCompletion))
		return
	}
	window, err := time.ParseDuration(req.CompletionWindow)
	if err != nil || window <= 0 {
		apiError(w, http.StatusBadRequest, "completion_window", fmt.Sprintf("completion_window %q: want a duration such as 24h", req.CompletionWindow))
		return
	}
	if len(req.Metadata) > 16 {
		apiError(w, http.StatusBadRequest, "metadata", "metadata: at most 16 pairs")
		return
	}
	f, err := a.loadFile(r.Context(), req.InputFileID)
	if err != nil {
		if errors.Is(err, kvstore.ErrNotFound) {
			apiError(w, http.StatusBadRequest, "input_file_id", fmt.Sprintf("no file with id %q", req.InputFileID))
			return
		}
		apiError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	if f.Purpose != "batch" {
		apiError(w, http.StatusBadRequest, "input_file_id", fmt.Sprintf("file %s has purpose %q, want batch", f.ID, f.Purpose))
		return
	}
	now := a.opts.Now()
	exp := now.Add(window).Unix()
	tier, _ := a.opts.Tiers.Resolve("")
	if req.Metadata == nil {
		req.Metadata = map[string]string{}
	}
	st := stored{Batch: BatchObject{ID: newID("batch_"), Object: "batch", Endpoint: req.Endpoint, InputFileID: f.ID,
		CompletionWindow: req.CompletionWindow, Status: StatusValidating, CreatedAt: now.Unix(), ExpiresAt: &exp,
		Metadata: req.Metadata}, Origin: OriginOf(r), Tier: tier}
	// The lease first: no replica sees the batch (in the index) before
	// its owner holds it.
	if won, err := a.claim(r.Context(), st.Batch.ID, 1); err != nil || !won {
		apiError(w, http.StatusInternalServerError, "", fmt.Sprintf("leasing the batch: %v", err))
		return
	}
	if err := a.save(r.Context(), &st); err != nil {
		apiError(w, http.StatusInternalServerError, "", "storing the batch: "+err.Error())
		return
	}
	if err := a.opts.Store.Put(context.WithoutCancel(r.Context()), indexKey(st.Batch.CreatedAt, st.Batch.ID), nil); err != nil {
		apiError(w, http.StatusInternalServerError, "", "indexing the batch: "+err.Error())
		return
	}
	rn := &run{id: st.Batch.ID, st: st, epoch: 1}
	a.mu.Lock()
	a.batches[st.Batch.ID] = rn
	a.start(rn)
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, st.Batch)
}

func (a *API) save(ctx context.Context, st *stored) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return a.opts.Store.Put(context.WithoutCancel(ctx), batchKey(st.Batch.ID, "state"), raw)
}

func (a *API) getBatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	b, err := a.view(r.Context(), id)
	if err != nil {
		a.storeError(w, "batch", id, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// listBatches lists the batches in storage, whichever replica created or
// runs them, newest first with OpenAI's pagination (limit, after).
func (a *API) listBatches(w http.ResponseWriter, r *http.Request) {
	limit := 20
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100 {
			apiError(w, http.StatusBadRequest, "limit", "limit: 1 to 100")
			return
		}
		limit = n
	}
	after := r.URL.Query().Get("after")
	objs, err := a.opts.Store.List(r.Context(), indexPrefix, 0)
	if err != nil {
		apiError(w, http.StatusInternalServerError, "", "listing batches: "+err.Error())
		return
	}
	type entry struct {
		created int64
		id      string
	}
	all := make([]entry, 0, len(objs))
	for _, o := range objs {
		if c, id, ok := parseIndexKey(o.Key); ok {
			all = append(all, entry{c, id})
		}
	}
	// Newest first, as OpenAI lists them.
	sort.Slice(all, func(i, j int) bool {
		if all[i].created != all[j].created {
			return all[i].created > all[j].created
		}
		return all[i].id > all[j].id
	})
	if after != "" {
		for i, e := range all {
			if e.id == after {
				all = all[i+1:]
				break
			}
		}
	}
	data := make([]BatchObject, 0, limit)
	more := false
	for _, e := range all {
		if len(data) == limit {
			more = true
			break
		}
		b, err := a.view(r.Context(), e.id)
		if errors.Is(err, kvstore.ErrNotFound) {
			continue // indexed, state not yet written
		}
		if err != nil {
			apiError(w, http.StatusInternalServerError, "", "listing batches: "+err.Error())
			return
		}
		data = append(data, b)
	}
	out := map[string]any{"object": "list", "data": data, "has_more": more}
	if len(data) > 0 {
		out["first_id"], out["last_id"] = data[0].ID, data[len(data)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// cancelBatch cancels a batch: directly when this process runs it, else
// by recording the request in storage, which its runner (on any replica)
// reads at its next commit; either way the answer is "cancelling".
func (a *API) cancelBatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	a.mu.Lock()
	rn := a.batches[id]
	a.mu.Unlock()
	if rn != nil && rn.running() {
		a.cancelLocal(w, r, rn)
		return
	}
	b, err := a.view(r.Context(), id)
	if err != nil {
		a.storeError(w, "batch", id, err)
		return
	}
	switch {
	case b.Status == StatusCancelled || b.Status == StatusCancelling:
	case Terminal(b.Status):
		apiError(w, http.StatusConflict, "", fmt.Sprintf("batch %s is %s: it cannot be cancelled", b.ID, b.Status))
		return
	default:
		now := a.opts.Now().Unix()
		if err := a.requestCancel(r.Context(), id, now); err != nil {
			apiError(w, http.StatusInternalServerError, "", err.Error())
			return
		}
		if b, err = a.view(r.Context(), id); err != nil {
			a.storeError(w, "batch", id, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, b)
}

func (a *API) cancelLocal(w http.ResponseWriter, r *http.Request, rn *run) {
	b := rn.snapshot()
	switch {
	case b.Status == StatusCancelled || b.Status == StatusCancelling:
	case Terminal(b.Status):
		apiError(w, http.StatusConflict, "", fmt.Sprintf("batch %s is %s: it cannot be cancelled", b.ID, b.Status))
		return
	default:
		// Recorded for whichever runner holds the batch next too.
		if err := a.requestCancel(r.Context(), b.ID, a.opts.Now().Unix()); err != nil {
			apiError(w, http.StatusInternalServerError, "", err.Error())
			return
		}
		marked, err := a.markCancel(r.Context(), rn)
		if err != nil && !errors.Is(err, errSuperseded) {
			apiError(w, http.StatusInternalServerError, "", err.Error())
			return
		}
		// The batch as the cancel left it (OpenAI answers cancelling),
		// not as the stopped runner may already have finished it.
		b = marked
		if b.Status != StatusCancelling && !Terminal(b.Status) {
			// Superseded meanwhile: its new runner reads the request.
			at := a.opts.Now().Unix()
			b.Status, b.CancellingAt = StatusCancelling, &at
		}
	}
	writeJSON(w, http.StatusOK, b)
}

// noticeCancel reads a cancel request another replica recorded and, if
// there is one, cancels the batch here as a local cancel would.
func (a *API) noticeCancel(ctx context.Context, rn *run) error {
	_, err := a.markCancel(ctx, rn)
	return err
}

// markCancel is noticeCancel returning the batch as marking it cancelling
// left it, before its runner, told to stop, finishes it.
func (a *API) markCancel(ctx context.Context, rn *run) (BatchObject, error) {
	id := rn.snapshot().ID
	m, err := a.cancelRequested(ctx, id)
	if err != nil || m == nil {
		return rn.snapshot(), err
	}
	if b := rn.snapshot(); Terminal(b.Status) || b.Status == StatusCancelling {
		return b, nil
	}
	err = a.update(rn, func(st *stored) {
		if b := &st.Batch; !Terminal(b.Status) && b.Status != StatusCancelling {
			at := m.At
			b.Status, b.CancellingAt = StatusCancelling, &at
		}
	})
	marked := rn.snapshot()
	rn.mu.Lock()
	cancel := rn.cancel
	rn.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return marked, err
}

// start runs a batch's runner; a.mu is held.
func (a *API) start(rn *run) {
	ctx, cancel := context.WithCancel(a.ctx)
	rn.mu.Lock()
	rn.cancel = cancel
	rn.done = make(chan struct{})
	done := rn.done
	rn.mu.Unlock()
	a.wg.Add(2)
	renewCtx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer a.wg.Done()
		defer close(renewed)
		a.renew(renewCtx, rn)
	}()
	go func() {
		defer a.wg.Done()
		defer close(done)
		defer cancel()
		err := a.execute(ctx, rn)
		// No heartbeat may land after the release below.
		stopRenew()
		<-renewed
		if err != nil && a.ctx.Err() == nil && !errors.Is(err, errSuperseded) {
			a.opts.Logger.Warn("batch: runner stopped", "batch", rn.id, "err", err)
		}
		rn.mu.Lock()
		rn.cancel = nil
		gone := rn.superseded
		rn.mu.Unlock()
		// Stopped unfinished (shutdown, a storage error), not taken over:
		// released, so a replica (this one too) takes it over at once.
		if !Terminal(rn.snapshot().Status) && !gone && !errors.Is(err, errSuperseded) && !a.crashed.Load() {
			if err := a.beat(rn, true); err != nil {
				a.opts.Logger.Warn("batch: releasing its lease", "batch", rn.id, "err", err)
			}
		}
	}()
}

// update changes a batch's state under its lock and stores it.
func (a *API) update(rn *run, f func(st *stored)) error {
	if err := a.fence(rn); err != nil {
		return err
	}
	rn.mu.Lock()
	f(&rn.st)
	st := rn.st
	rn.mu.Unlock()
	return a.save(a.ctx, &st)
}

func (a *API) fail(rn *run, code, msg string) error {
	now := a.opts.Now().Unix()
	rn.mu.Lock()
	st := rn.st
	rn.mu.Unlock()
	st.Batch.Status, st.Batch.FailedAt = StatusFailed, &now
	st.Batch.Errors = &BatchErrors{Object: "list", Data: []BatchError{{Code: code, Message: msg}}}
	return a.commitFinal(rn, st)
}

// commitFinal stores a terminal state: created once (the final object),
// so of two runners that got here (one superseded after its last check)
// only one result is ever shown, then as the batch's state.
func (a *API) commitFinal(rn *run, st stored) error {
	if err := a.fence(rn); err != nil {
		return err
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := a.opts.Store.PutIfAbsent(context.WithoutCancel(a.ctx), batchKey(st.Batch.ID, "final"), raw); err != nil {
		if errors.Is(err, kvstore.ErrExists) {
			rn.supersede()
			return errSuperseded
		}
		return fmt.Errorf("writing the final state: %w", err)
	}
	rn.mu.Lock()
	rn.st = st
	rn.mu.Unlock()
	return a.save(a.ctx, &st)
}

func chunkKey(id string, seq int) string {
	return fmt.Sprintf("batch/batches/%s/chunks/%08d", id, seq)
}

// execute runs a batch from wherever its stored state says it is.
func (a *API) execute(ctx context.Context, rn *run) error {
	st := func() stored { rn.mu.Lock(); defer rn.mu.Unlock(); return rn.st }()
	b := st.Batch
	// Storage is read with a.ctx: a cancel stops the work, not the reads
	// that finalize it.
	content, err := a.opts.Store.Get(a.ctx, fileKey(b.InputFileID, "content"))
	if err != nil {
		if a.ctx.Err() != nil {
			return a.ctx.Err()
		}
		return a.fail(rn, "invalid_file", fmt.Sprintf("input file %s: %v", b.InputFileID, err))
	}
	// A cancel recorded while no replica ran it.
	if err := a.noticeCancel(a.ctx, rn); err != nil {
		return err
	}
	lines, _ := splitLines(content)
	if st.Batch.Status == StatusValidating {
		switch {
		case len(lines) == 0:
			return a.fail(rn, "empty_file", "the input file has no lines")
		case len(lines) > a.opts.MaxLines:
			return a.fail(rn, "too_many_lines", fmt.Sprintf("%d lines, limit %d", len(lines), a.opts.MaxLines))
		}
		now := a.opts.Now().Unix()
		if err := a.update(rn, func(st *stored) {
			if st.Batch.Status == StatusValidating { // not if cancelled meanwhile
				st.Batch.Status, st.Batch.InProgressAt = StatusInProgress, &now
			}
			st.Batch.RequestCounts.Total = len(lines)
		}); err != nil {
			return err
		}
	}
	// What earlier runs committed: every chunk there is (a runner that
	// stopped between a chunk and the state that counts it left one more).
	results := make([]*lineResult, len(lines))
	seq := 0
	for ; ; seq++ {
		chunk, err := a.readChunk(b.ID, seq)
		if errors.Is(err, kvstore.ErrNotFound) && seq >= st.Chunks {
			break
		}
		if err != nil {
			return fmt.Errorf("chunk %d: %w", seq, err)
		}
		merge(results, chunk)
	}
	rn.mu.Lock()
	rn.st.Chunks = seq
	rn.mu.Unlock()
	status := func() string { rn.mu.Lock(); defer rn.mu.Unlock(); return rn.st.Batch.Status }
	if status() == StatusInProgress {
		deadline := time.Unix(*b.ExpiresAt, 0)
		wctx, cancel := context.WithDeadline(ctx, deadline)
		err := a.work(wctx, rn, lines, results)
		cancel()
		if a.ctx.Err() != nil {
			return a.ctx.Err() // shutting down: resume later
		}
		if err != nil {
			return err
		}
	}
	// Finalize: whatever stopped the work (all done, cancelled, expired),
	// unfinished lines become error lines and the files are written.
	final := StatusCompleted
	switch s := status(); {
	case s == StatusCancelling || s == StatusCancelled:
		final = StatusCancelled
	case a.opts.Now().Unix() >= *b.ExpiresAt && slicesHasNil(results):
		final = StatusExpired
	}
	if final == StatusCompleted {
		now := a.opts.Now().Unix()
		if err := a.update(rn, func(st *stored) { st.Batch.Status, st.Batch.FinalizingAt = StatusFinalizing, &now }); err != nil {
			return err
		}
	}
	return a.finalize(rn, lines, results, final)
}

func (a *API) readChunk(id string, seq int) ([]lineResult, error) {
	raw, err := a.opts.Store.Get(a.ctx, chunkKey(id, seq))
	if err != nil {
		return nil, err
	}
	var chunk []lineResult
	if err := json.Unmarshal(raw, &chunk); err != nil {
		return nil, err
	}
	return chunk, nil
}

// merge adds a chunk's lines to results; the first chunk that holds a
// line wins (two runners of one batch may both have committed it).
func merge(results []*lineResult, chunk []lineResult) {
	for i := range chunk {
		if c := &chunk[i]; c.Index >= 0 && c.Index < len(results) && results[c.Index] == nil {
			results[c.Index] = c
		}
	}
}

// tally counts and sums the finished lines.
func tally(results []*lineResult) (ok, failed int, u *BatchUsage) {
	u = &BatchUsage{}
	for _, r := range results {
		if r == nil {
			continue
		}
		if r.OK {
			ok++
		} else {
			failed++
		}
		if r.Usage != nil {
			u.InputTokens += r.Usage.PromptTokens
			u.OutputTokens += r.Usage.CompletionTokens
			if r.Usage.PromptTokensDetails != nil {
				u.InputTokensDetails.CachedTokens += r.Usage.PromptTokensDetails.CachedTokens
			}
		}
	}
	u.TotalTokens = u.InputTokens + u.OutputTokens
	return ok, failed, u
}

func slicesHasNil(rs []*lineResult) bool {
	for _, r := range rs {
		if r == nil {
			return true
		}
	}
	return false
}

// work sends the unfinished lines, Concurrency at a time, and commits
// results in chunks.
func (a *API) work(ctx context.Context, rn *run, lines [][]byte, results []*lineResult) error {
	b := rn.snapshot()
	st := func() stored { rn.mu.Lock(); defer rn.mu.Unlock(); return rn.st }()
	todo := make(chan int)
	out := make(chan *lineResult)
	var wg sync.WaitGroup
	for w := 0; w < a.opts.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range todo {
				res := a.line(ctx, b, st, i, lines[i])
				if res == nil {
					continue // stopped: not finished
				}
				select {
				case out <- res:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() {
		defer close(todo)
		for i, r := range results {
			if r != nil {
				continue
			}
			select {
			case todo <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(out) }()

	var pending []lineResult
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		rn.mu.Lock()
		seq := rn.st.Chunks
		rn.mu.Unlock()
		// The chunk first, then the state that counts it: a crash between
		// the two redoes the chunk's lines, never loses them. A chunk is
		// created only if absent: one already there was committed by a
		// runner this one superseded (or that supersedes it: the fence).
		for len(pending) > 0 {
			if err := a.fence(rn); err != nil {
				return err
			}
			raw, err := json.Marshal(pending)
			if err != nil {
				return err
			}
			err = a.opts.Store.PutIfAbsent(context.WithoutCancel(ctx), chunkKey(b.ID, seq), raw)
			if err == nil {
				seq++
				break
			}
			if !errors.Is(err, kvstore.ErrExists) {
				return err
			}
			if err := a.fence(rn); err != nil {
				return err
			}
			other, err := a.readChunk(b.ID, seq)
			if err != nil {
				return fmt.Errorf("chunk %d: %w", seq, err)
			}
			// Its lines stand (as they will for whoever reads the chunks
			// again); ours that it holds are dropped.
			mine := map[int]bool{}
			for _, p := range pending {
				mine[p.Index] = true
			}
			held := map[int]bool{}
			for i := range other {
				if c := &other[i]; c.Index >= 0 && c.Index < len(results) && (results[c.Index] == nil || mine[c.Index]) {
					results[c.Index], held[c.Index] = c, true
				}
			}
			pending = slices.DeleteFunc(pending, func(p lineResult) bool { return held[p.Index] })
			seq++
		}
		pending = pending[:0]
		ok, failed, u := tally(results)
		return a.update(rn, func(st *stored) {
			st.Chunks = seq
			st.Batch.RequestCounts.Completed = ok
			st.Batch.RequestCounts.Failed = failed
			st.Batch.Usage = u
		})
	}
	// Each commit, and each FlushInterval without one, reads whether
	// another replica recorded a cancel.
	commit := func() error {
		if err := flush(); err != nil {
			return err
		}
		return a.noticeCancel(a.ctx, rn)
	}
	tick := time.NewTicker(a.opts.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case res, open := <-out:
			if !open {
				return flush()
			}
			if results[res.Index] != nil {
				continue // committed meanwhile by a runner this one superseded
			}
			results[res.Index] = res
			pending = append(pending, *res)
			if len(pending) >= a.opts.FlushEvery {
				if err := commit(); err != nil {
					return err
				}
			}
		case <-tick.C:
			if err := commit(); err != nil {
				return err
			}
		}
	}
}

// line serves one input line; nil if stopped before an answer.
func (a *API) line(ctx context.Context, b BatchObject, st stored, i int, raw []byte) *lineResult {
	reqID := fmt.Sprintf("batch_req_%s_%d", strings.TrimPrefix(b.ID, "batch_"), i)
	l, err := parseLine(raw, b.Endpoint)
	if err != nil {
		return errorLine(i, reqID, l.CustomID, ReasonMalformed, "line "+strconv.Itoa(i+1)+": "+err.Error(), nil)
	}
	out := infer(ctx, a.opts.Backend, b.Endpoint, l.Body, st.Tier, st.Origin, a.opts.Retry)
	if ctx.Err() != nil && !out.OK() {
		return nil
	}
	if !out.OK() {
		return errorLine(i, reqID, l.CustomID, out.Reason, out.Message, &out)
	}
	id := l.CustomID
	line, _ := json.Marshal(outputLine{ID: reqID, CustomID: &id,
		Response: &lineResponse{StatusCode: out.Status, RequestID: reqID, Body: out.Body}})
	var u struct {
		Usage *usage `json:"usage"`
	}
	_ = json.Unmarshal(out.Body, &u)
	return &lineResult{Index: i, Line: line, OK: true, Usage: u.Usage}
}

func errorLine(i int, reqID, customID, code, msg string, out *Outcome) *lineResult {
	ol := outputLine{ID: reqID, Error: &lineError{Code: code, Message: msg}}
	if customID != "" {
		ol.CustomID = &customID
	}
	if out != nil && out.Status != 0 {
		ol.Response = &lineResponse{StatusCode: out.Status, RequestID: reqID, Body: out.Body}
		if out.Body == nil {
			ol.Response.Body = json.RawMessage("null")
		}
	}
	line, _ := json.Marshal(ol)
	return &lineResult{Index: i, Line: line}
}

// finalize writes the output and error files (in input order) and the
// terminal status.
func (a *API) finalize(rn *run, lines [][]byte, results []*lineResult, final string) error {
	b := rn.snapshot()
	var okBuf, errBuf bytes.Buffer
	failed := 0
	for i, r := range results {
		if r == nil {
			code, msg := "batch_cancelled", "the batch was cancelled before this line ran"
			if final == StatusExpired {
				code, msg = "batch_expired", "the completion window closed before this line ran"
			}
			var l inputLine
			_ = json.Unmarshal(lines[i], &l)
			reqID := fmt.Sprintf("batch_req_%s_%d", strings.TrimPrefix(b.ID, "batch_"), i)
			r = errorLine(i, reqID, l.CustomID, code, msg, nil)
			failed++
		}
		buf := &errBuf
		if r.OK {
			buf = &okBuf
		}
		buf.Write(r.Line)
		buf.WriteByte('\n')
	}
	if err := a.fence(rn); err != nil {
		return err
	}
	now := a.opts.Now()
	var outID, errID *string
	for _, f := range []struct {
		buf *bytes.Buffer
		id  **string
	}{{&okBuf, &outID}, {&errBuf, &errID}} {
		if f.buf.Len() == 0 {
			continue
		}
		id := newID("file-")
		fo := FileObject{ID: id, Object: "file", Bytes: int64(f.buf.Len()), CreatedAt: now.Unix(),
			Filename: b.ID + "_output.jsonl", Purpose: "batch_output", Status: "processed"}
		if f.id == &errID {
			fo.Filename = b.ID + "_error.jsonl"
		}
		if err := a.putFile(a.ctx, fo, f.buf.Bytes()); err != nil {
			return fmt.Errorf("writing results: %w", err)
		}
		*f.id = &id
	}
	t := now.Unix()
	ok, done, u := tally(results)
	rn.mu.Lock()
	st := rn.st
	rn.mu.Unlock()
	st.Batch.Status = final
	st.Batch.OutputFileID, st.Batch.ErrorFileID = outID, errID
	st.Batch.RequestCounts.Completed, st.Batch.RequestCounts.Failed, st.Batch.Usage = ok, done+failed, u
	switch final {
	case StatusCompleted:
		st.Batch.CompletedAt = &t
	case StatusCancelled:
		st.Batch.CancelledAt = &t
	case StatusExpired:
		st.Batch.ExpiredAt = &t
	}
	err := a.commitFinal(rn, st)
	if errors.Is(err, errSuperseded) {
		// Not after another error: the final state may have been stored
		// with them though its write answered an error.
		a.dropFiles(outID, errID)
	}
	return err
}

// dropFiles deletes the result files of a finalization that lost.
func (a *API) dropFiles(ids ...*string) {
	for _, id := range ids {
		if id == nil {
			continue
		}
		for _, part := range []string{"meta", "content"} {
			if err := a.opts.Store.Delete(context.WithoutCancel(a.ctx), fileKey(*id, part)); err != nil {
				a.opts.Logger.Warn("batch: deleting an unused result file", "file", *id, "err", err)
			}
		}
	}
}
