// Package batch runs LLM work that nobody waits on interactively: OpenAI
// requests carried by CloudEvents (Knative Eventing's Broker/Trigger
// delivery, replies, sinks and dead-letter sinks) and OpenAI's Batch API
// (/v1/files, /v1/batches). Both send each request through a Backend (in the
// activator: its own handler chain, in the batch tier) so batch work soaks
// the capacity interactive tiers leave idle and is held and shed first.
//
// Results are delivered at least once and computed once: events are deduped
// by id+source within a retention window, batch progress is kept in object
// storage (pkg/kvstore) so a restart resumes without redoing finished lines.
// The package imports the CloudEvents SDK and kvstore, never the activator.
package batch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
)

// The event types llmd-kn reads and writes (docs/cloudevents.md).
const (
	TypeRequest  = "ai.llm-d.inference.request.v1"
	TypeResponse = "ai.llm-d.inference.response.v1"
	TypeError    = "ai.llm-d.inference.error.v1"
)

// CloudEvents extension attributes (lower-case alphanumerics, as the spec
// requires).
const (
	// ExtTier names the SLO tier of a request event (default: batch); a
	// client may only lower it.
	ExtTier = "llmdtier"
	// ExtDeadline is the time (RFC 3339) after which a request's result is
	// no longer wanted: it becomes an error event with reason
	// DeadlineExceeded.
	ExtDeadline = "llmddeadline"
	// ExtRequestSource on a result carries the request event's source; the
	// result's subject is the request event's id.
	ExtRequestSource = "llmdrequestsource"
	// ExtDeliveryError on an event sent to the dead-letter sink says why
	// the sink did not take it.
	ExtDeliveryError = "llmddeliveryerror"
)

// Kinds of OpenAI request an event may carry, by the path they are served on.
const (
	PathChat       = "/v1/chat/completions"
	PathCompletion = "/v1/completions"
)

// Request is one decoded request event.
type Request struct {
	Event    event.Event
	Path     string // PathChat or PathCompletion
	Body     map[string]json.RawMessage
	Model    string // "" when omitted: the Service's model
	Tier     string // "" when not set
	Deadline time.Time
}

// Key is the dedupe key: the event's source and id, as the spec makes them
// unique together.
func (r *Request) Key() string { return r.Event.Source() + "\x00" + r.Event.ID() }

// DecodeError is a malformed event: the HTTP request is answered 400 with
// its message. ID and Source are set when the event got that far, so an
// error event can name it.
type DecodeError struct {
	ID, Source string
	Msg        string
}

func (e *DecodeError) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("event %q from %q: %s", e.ID, e.Source, e.Msg)
	}
	return e.Msg
}

func decodeErr(format string, args ...any) *DecodeError {
	return &DecodeError{Msg: fmt.Sprintf(format, args...)}
}

// Limits bound what Decode accepts.
type Limits struct {
	MaxBodyBytes int64 // the whole HTTP body (default 16 MiB)
	MaxEvents    int   // events in one batched request (default 1000)
}

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = 16 << 20
	}
	if l.MaxEvents <= 0 {
		l.MaxEvents = 1000
	}
	return l
}

// Mode is how events arrived (and how a reply goes back).
type Mode int

const (
	ModeBinary Mode = iota
	ModeStructured
	ModeBatched
)

// IsCloudEvent reports whether an HTTP request looks like a CloudEvent in
// any HTTP mode, so the activator can tell it from other traffic at "/".
func IsCloudEvent(h http.Header) bool {
	if h.Get("Ce-Specversion") != "" {
		return true
	}
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return strings.HasPrefix(mt, "application/cloudevents")
}

// Decode reads the events of one HTTP request (binary, structured or
// batched mode) and validates each as an inference request. Any malformed
// event fails the whole request (Eventing redelivers or dead-letters it as
// one), with a *DecodeError naming the problem.
func Decode(r *http.Request, lim Limits) ([]*Request, Mode, error) {
	lim = lim.withDefaults()
	body, err := io.ReadAll(io.LimitReader(r.Body, lim.MaxBodyBytes+1))
	if err != nil {
		return nil, 0, decodeErr("reading the body: %v", err)
	}
	if int64(len(body)) > lim.MaxBodyBytes {
		return nil, 0, decodeErr("body over the limit of %d bytes", lim.MaxBodyBytes)
	}
	return DecodeBytes(r.Header, body, lim)
}

// DecodeBytes is Decode on a body already read (the fuzz target's entry).
func DecodeBytes(h http.Header, body []byte, lim Limits) ([]*Request, Mode, error) {
	lim = lim.withDefaults()
	if int64(len(body)) > lim.MaxBodyBytes {
		return nil, 0, decodeErr("body over the limit of %d bytes", lim.MaxBodyBytes)
	}
	req := &http.Request{Method: http.MethodPost, Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	var evs []event.Event
	mode := ModeBinary
	switch {
	case mt == event.ApplicationCloudEventsBatchJSON:
		mode = ModeBatched
		if err := json.Unmarshal(body, &evs); err != nil {
			return nil, mode, decodeErr("batched CloudEvents: %v", err)
		}
		if len(evs) == 0 {
			return nil, mode, decodeErr("batched CloudEvents: no events")
		}
		if len(evs) > lim.MaxEvents {
			return nil, mode, decodeErr("batched CloudEvents: %d events, limit %d", len(evs), lim.MaxEvents)
		}
	case strings.HasPrefix(mt, "application/cloudevents"):
		mode = ModeStructured
		if mt != event.ApplicationCloudEventsJSON {
			return nil, mode, decodeErr("content type %q: structured mode supports %s only", mt, event.ApplicationCloudEventsJSON)
		}
		fallthrough
	default:
		if mode == ModeBinary && h.Get("Ce-Specversion") == "" {
			return nil, mode, decodeErr("not a CloudEvent: no ce-specversion header and content type %q is not application/cloudevents+json or application/cloudevents-batch+json", h.Get("Content-Type"))
		}
		ev, err := cehttp.NewEventFromHTTPRequest(req)
		if err != nil {
			return nil, mode, decodeErr("CloudEvent: %v", err)
		}
		evs = []event.Event{*ev}
	}
	out := make([]*Request, 0, len(evs))
	seen := map[string]bool{}
	for i := range evs {
		rq, err := decodeEvent(evs[i])
		if err != nil {
			if mode == ModeBatched {
				err.Msg = fmt.Sprintf("event %d of the batch: %s", i, err.Msg)
			}
			return nil, mode, err
		}
		if seen[rq.Key()] {
			continue // the same event twice in one batch is one event
		}
		seen[rq.Key()] = true
		out = append(out, rq)
	}
	return out, mode, nil
}

func decodeEvent(ev event.Event) (*Request, *DecodeError) {
	fail := func(format string, args ...any) *DecodeError {
		return &DecodeError{ID: ev.ID(), Source: ev.Source(), Msg: fmt.Sprintf(format, args...)}
	}
	if err := ev.Validate(); err != nil {
		return nil, fail("missing or invalid attributes: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if ev.Type() != TypeRequest {
		return nil, fail("type %q: this endpoint takes %s", ev.Type(), TypeRequest)
	}
	if ct := ev.DataContentType(); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return nil, fail("datacontenttype %q: the data must be application/json (an OpenAI request)", ct)
		}
	}
	if ev.DataBase64 {
		return nil, fail("data_base64: the data must be a JSON OpenAI request, not binary")
	}
	rq := &Request{Event: ev}
	data := ev.Data()
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fail("no data: the data must be an OpenAI completions or chat request")
	}
	if err := json.Unmarshal(data, &rq.Body); err != nil || rq.Body == nil {
		return nil, fail("data is not a JSON object (an OpenAI completions or chat request)")
	}
	_, chat := rq.Body["messages"]
	_, prompt := rq.Body["prompt"]
	switch {
	case chat && prompt:
		return nil, fail("data has both messages and prompt: send a chat or a completions request")
	case chat:
		rq.Path = PathChat
		var msgs []json.RawMessage
		if err := json.Unmarshal(rq.Body["messages"], &msgs); err != nil || len(msgs) == 0 {
			return nil, fail("data.messages: want a non-empty array of chat messages")
		}
	case prompt:
		rq.Path = PathCompletion
	default:
		return nil, fail("data is not an OpenAI request: want messages (chat) or prompt (completions)")
	}
	if m, ok := rq.Body["model"]; ok && string(m) != "null" {
		if err := json.Unmarshal(m, &rq.Model); err != nil {
			return nil, fail("data.model: want a string")
		}
	}
	exts := ev.Extensions()
	if v, ok := exts[ExtTier]; ok {
		s, err := types.ToString(v)
		if err != nil || s == "" {
			return nil, fail("extension %s: want a tier name", ExtTier)
		}
		rq.Tier = s
	}
	if v, ok := exts[ExtDeadline]; ok {
		t, err := types.ToTime(v)
		if err != nil {
			return nil, fail("extension %s: want an RFC 3339 time: %v", ExtDeadline, err)
		}
		rq.Deadline = t
	}
	return rq, nil
}
