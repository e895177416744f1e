package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// twoIngresses starts replicas A and B on one store (a directory). With
// long claims no claim expires while its owner lives, however slow the
// machine: a takeover is then only the dead-owner test's.
// The third replica (C) on that store answers from storage.
func twoIngresses(t *testing.T, eng *engine, opts IngressOptions, long bool) (a, b *Ingress, urlA, urlB, urlC string) {
	t.Helper()
	stores := openShared(t, 3)
	opts.ClaimRenew, opts.ClaimTTL = 10*time.Millisecond, 50*time.Millisecond
	if long {
		opts.ClaimRenew, opts.ClaimTTL = 10*time.Second, time.Hour
	}
	opts.ClaimPollMin, opts.ClaimPollMax = 2*time.Millisecond, 20*time.Millisecond
	oa, ob := opts, opts
	oa.Store, oa.ReplicaID = stores[0], "replica-a"
	ob.Store, ob.ReplicaID = stores[1], "replica-b"
	a, urlA = newIngress(t, HTTPBackend{URL: eng.url}, oa)
	b, urlB = newIngress(t, HTTPBackend{URL: eng.url}, ob)
	_, urlC = newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{Store: stores[2], ReplicaID: "replica-c"})
	return a, b, urlA, urlB, urlC
}

type answer struct {
	ev  *event.Event
	res error
}

func request(c cloudevents.Client, ctx context.Context, url string, ev event.Event) chan answer {
	ch := make(chan answer, 1)
	go func() {
		reply, res := c.Request(cloudevents.ContextWithTarget(ctx, url), ev)
		ch <- answer{reply, res}
	}()
	return ch
}

func (a answer) check(t *testing.T, id string) *event.Event {
	t.Helper()
	if !cloudevents.IsACK(a.res) {
		t.Fatal(a.res)
	}
	checkResponse(t, a.ev, id)
	return a.ev
}

// TestDuplicateOnOtherReplicaWaits: Eventing redelivers to replica B
// while A still infers the event: B infers nothing, waits for A's result
// in storage and answers it.
func TestDuplicateOnOtherReplicaWaits(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	a, b, urlA, urlB, urlC := twoIngresses(t, eng, IngressOptions{}, true)
	c := sender(t)
	ansA := request(c, context.Background(), urlA, chatEvent("ha-1", testModel))
	<-eng.entered // A infers
	ansB := request(c, context.Background(), urlB, chatEvent("ha-1", testModel))
	waitFor(t, func() bool { return b.dedupe.waits.Load() == 1 })
	releaseGate(eng)
	evA, evB := (<-ansA).check(t, "ha-1"), (<-ansB).check(t, "ha-1")
	if evA.ID() != evB.ID() || string(evA.Data()) != string(evB.Data()) {
		t.Fatalf("A answered %s, B %s", evA, evB)
	}
	if n := eng.calls.Load(); n != 1 {
		t.Fatalf("%d inferences for one event delivered to two replicas", n)
	}
	if sa, sb := a.Stats(), b.Stats(); sa.Answered != 1 || sb.Answered != 0 || sb.Duplicates != 1 {
		t.Fatalf("stats A %+v, B %+v", sa, sb)
	}
	// Later duplicates: answered from memory (A, B) or storage (a third
	// replica), never inferred again.
	for _, url := range []string{urlA, urlB, urlC} {
		if ev := (<-request(c, context.Background(), url, chatEvent("ha-1", testModel))).check(t, "ha-1"); ev.ID() != evA.ID() {
			t.Fatalf("%s answered a duplicate with another result", url)
		}
	}
	if n := eng.calls.Load(); n != 1 {
		t.Fatalf("%d inferences after later duplicates", n)
	}
}

// TestDuplicateOnOtherReplicaAsync: with a sink, B answers 202 at once
// and leaves the delivery to A: the sink gets the result once, however
// often the event reached B meanwhile.
func TestDuplicateOnOtherReplicaAsync(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	snk := startSink(t)
	a, b, urlA, urlB, _ := twoIngresses(t, eng, IngressOptions{Sink: func(*http.Request) string { return snk.url }}, true)
	c := sender(t)
	for i, url := range []string{urlA, urlB, urlB} {
		reply, res := c.Request(cloudevents.ContextWithTarget(context.Background(), url), chatEvent("hs-1", testModel))
		var hr *cehttp.Result
		if !cloudevents.IsACK(res) || !errors.As(res, &hr) || hr.StatusCode != http.StatusAccepted || reply != nil {
			t.Fatalf("delivery %d: %v, want 202", i, res)
		}
		if i == 0 {
			<-eng.entered // A infers
		}
	}
	waitFor(t, func() bool { return b.dedupe.waits.Load() == 1 })
	releaseGate(eng)
	ev := snk.next(t)
	checkResponse(t, &ev, "hs-1")
	waitFor(t, func() bool { return b.Stats().Duplicates == 2 && a.Stats().Delivered == 1 })
	if n, hits, sb := eng.calls.Load(), snk.hits.Load(), b.Stats(); n != 1 || hits != 1 || sb.Delivered != 0 {
		t.Fatalf("%d inferences, %d deliveries to the sink, B %+v", n, hits, sb)
	}
}

// TestDeadOwnerTakenOver: A dies while it infers, its claim left behind;
// B's delivery takes the event over once it has seen the claim unrenewed
// for the TTL, and infers it once.
func TestDeadOwnerTakenOver(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	a, b, urlA, urlB, urlC := twoIngresses(t, eng, IngressOptions{}, false)
	c := sender(t)
	ctxA, cancelA := context.WithCancel(context.Background())
	ansA := request(c, ctxA, urlA, chatEvent("hd-1", testModel))
	<-eng.entered
	a.dedupe.crashed.Store(true) // no more beats, no release, no result
	cancelA()
	if ans := <-ansA; cloudevents.IsACK(ans.res) {
		t.Fatalf("A answered %v", ans.ev)
	}
	releaseGate(eng)
	evB := (<-request(c, context.Background(), urlB, chatEvent("hd-1", testModel))).check(t, "hd-1")
	if n := eng.calls.Load(); n != 2 { // A's, cut off, and B's
		t.Fatalf("%d inferences, want A's and B's", n)
	}
	if sb := b.Stats(); sb.Answered != 1 || b.dedupe.waits.Load() != 1 {
		t.Fatalf("B %+v, %d waits", sb, b.dedupe.waits.Load())
	}
	// B's result is stored: C answers a duplicate from storage.
	if ev := (<-request(c, context.Background(), urlC, chatEvent("hd-1", testModel))).check(t, "hd-1"); ev.ID() != evB.ID() || eng.calls.Load() != 2 {
		t.Fatal("C answered a duplicate with another result")
	}
}

// TestDeadOwnerTakenOverAsync: the same with a sink: A dies with the
// work accepted; B answers 202 to the redelivery, takes the event over
// after the TTL and delivers the result once.
func TestDeadOwnerTakenOverAsync(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	snk := startSink(t)
	a, b, urlA, urlB, _ := twoIngresses(t, eng, IngressOptions{Sink: func(*http.Request) string { return snk.url }}, false)
	c := sender(t)
	if res := c.Send(cloudevents.ContextWithTarget(context.Background(), urlA), chatEvent("hda-1", testModel)); !cloudevents.IsACK(res) {
		t.Fatal(res)
	}
	<-eng.entered
	a.dedupe.crashed.Store(true)
	a.Close() // its worker gives up; the crash leaves its claim as it was
	releaseGate(eng)
	if res := c.Send(cloudevents.ContextWithTarget(context.Background(), urlB), chatEvent("hda-1", testModel)); !cloudevents.IsACK(res) {
		t.Fatal(res)
	}
	ev := snk.next(t)
	checkResponse(t, &ev, "hda-1")
	waitFor(t, func() bool { return b.Stats().Delivered == 1 })
	if n, hits, sa := eng.calls.Load(), snk.hits.Load(), a.Stats(); n != 2 || hits != 1 || sa.Delivered != 0 {
		t.Fatalf("%d inferences, %d deliveries to the sink, A %+v", n, hits, sa)
	}
}

// TestBadClaimExpires: a claim object that does not validate (anyone with
// write access to the bucket may have written it) blocks nothing for
// longer than the TTL: it is taken over, and the event inferred once.
func TestBadClaimExpires(t *testing.T) {
	eng := startEngine(t)
	store := openShared(t, 1)[0]
	in, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{Store: store,
		ClaimRenew: 10 * time.Millisecond, ClaimTTL: 50 * time.Millisecond})
	for i, raw := range []string{`{"owner":""}`, `not json`} {
		ev := chatEvent(fmt.Sprintf("bad-%d", i), testModel)
		if err := store.Put(context.Background(), claimKey(ev.Source()+"\x00"+ev.ID(), 1), []byte(raw)); err != nil {
			t.Fatal(err)
		}
		(<-request(sender(t), context.Background(), url, ev)).check(t, ev.ID())
		if w, s := in.dedupe.waits.Load(), in.Stats(); w != int64(i+1) || s.Answered != int64(i+1) {
			t.Fatalf("%q: %d waits, %+v", raw, w, s)
		}
	}
	if n := eng.calls.Load(); n != 2 {
		t.Fatalf("%d inferences for two events", n)
	}
}

// TestSavePendingKeepsResults: accepted work is recorded only where no
// live record is: a result another replica stored (between this replica's
// look and its write) stays; only an expired result is replaced.
func TestSavePendingKeepsResults(t *testing.T) {
	store := openShared(t, 1)[0]
	now := time.Unix(1_800_000_000, 0)
	d := newDedupe(10, time.Hour, store, func() time.Time { return now })
	ctx := context.Background()
	result, _ := json.Marshal(chatEvent("r-1", testModel))
	req := json.RawMessage(`{"specversion":"1.0","id":"r-1","source":"/s","type":"t"}`)
	if err := d.save(ctx, "k", record{At: now, Result: result}); err != nil {
		t.Fatal(err)
	}
	stored := func() record {
		raw, err := store.Get(ctx, storeKey("k"))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := parseRecord(raw)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	if err := d.savePending(ctx, "k", record{Request: req}); err != nil || stored().Pending {
		t.Fatalf("%v: a live result was overwritten", err)
	}
	now = now.Add(2 * time.Hour) // the result expired
	if err := d.savePending(ctx, "k", record{Request: req, Sink: "http://first"}); err != nil || !stored().Pending {
		t.Fatalf("%v: an expired result was kept", err)
	}
	if err := d.savePending(ctx, "k", record{Request: req, Sink: "http://second"}); err != nil || stored().Sink != "http://first" {
		t.Fatalf("%v: pending work was rewritten", err)
	}
}
