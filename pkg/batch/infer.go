package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Reasons a request ends without an answer (the reason field of an error
// event and of a Batch API error line).
const (
	ReasonInvalidRequest   = "InvalidRequest"   // the engine or activator refused it (4xx)
	ReasonModelNotFound    = "ModelNotFound"    // no such model here
	ReasonTierNotAllowed   = "TierNotAllowed"   // a tier above the default was asked for
	ReasonDeadlineExceeded = "DeadlineExceeded" // its deadline passed before an answer
	ReasonOverloaded       = "Overloaded"       // still refused (429/503) after every retry
	ReasonBackendError     = "BackendError"     // the backend failed (5xx, transport)
	ReasonMalformed        = "Malformed"        // the event or line could not be decoded
	ReasonCancelled        = "Cancelled"        // the batch was cancelled
)

// Outcome is what one inference came to.
type Outcome struct {
	Status  int             // the backend's status (0 if never answered)
	Body    json.RawMessage // the OpenAI response (Status 200) or error body
	Reason  string          // "" on success
	Message string
	// Transient: worth trying again later (overload, backend down); a
	// transient outcome is not remembered by dedupe.
	Transient bool

	retryAfterHdr string
}

// OK reports a successful answer.
func (o Outcome) OK() bool { return o.Reason == "" }

// TierPolicy decides which tier batch work runs in.
type TierPolicy struct {
	// Default is the tier of work that names none ("batch").
	Default string
	// Rank gives a tier's priority (higher is served first) and whether it
	// exists. A request may name a tier ranked at or below Default's,
	// never above. Nil: only Default is accepted.
	Rank func(name string) (int, bool)
}

// Resolve returns the tier for a requested name, or an error naming why
// it is refused.
func (p TierPolicy) Resolve(asked string) (string, error) {
	def := p.Default
	if def == "" {
		def = "batch"
	}
	if asked == "" || asked == def {
		return def, nil
	}
	if p.Rank == nil {
		return "", fmt.Errorf("tier %q: batch work runs in the %s tier", asked, def)
	}
	r, ok := p.Rank(asked)
	if !ok {
		return "", fmt.Errorf("tier %q: no such tier", asked)
	}
	if d, ok := p.Rank(def); ok && r > d {
		return "", fmt.Errorf("tier %q: a request may only lower its tier below %s, not raise it", asked, def)
	}
	return asked, nil
}

// Retry is the backoff for transient outcomes.
type Retry struct {
	Attempts int           // tries in all (1: no retry)
	Base     time.Duration // first wait, doubled each time (200 ms)
	Max      time.Duration // cap on one wait (30 s); a Retry-After longer than this is capped too
}

func (r Retry) wait(attempt int, retryAfter string) time.Duration {
	base, top := r.Base, r.Max
	if base <= 0 {
		base = 200 * time.Millisecond
	}
	if top <= 0 {
		top = 30 * time.Second
	}
	d := base << min(attempt, 20)
	if s, err := strconv.Atoi(retryAfter); err == nil && s > 0 {
		d = max(d, time.Duration(s)*time.Second)
	}
	return min(d, top)
}

// infer sends one OpenAI request (already validated) through the backend:
// it fills in the Service's model when omitted, never streams, and retries
// transient failures with backoff within the context's deadline.
func infer(ctx context.Context, be Backend, path string, body map[string]json.RawMessage, tier string, o Origin, retry Retry) Outcome {
	if _, ok := body["model"]; !ok || string(body["model"]) == "null" || string(body["model"]) == `""` {
		m, err := servedModel(ctx, be, o)
		if err != nil {
			if ctx.Err() != nil {
				return Outcome{Reason: ReasonDeadlineExceeded, Message: ctx.Err().Error()}
			}
			return Outcome{Reason: ReasonModelNotFound, Message: err.Error()}
		}
		body["model"], _ = json.Marshal(m)
	}
	// Results are whole documents: a streamed answer has no place in an
	// event or an output line.
	delete(body, "stream")
	delete(body, "stream_options")
	raw, err := json.Marshal(body)
	if err != nil {
		return Outcome{Reason: ReasonInvalidRequest, Message: err.Error()}
	}
	attempts := max(retry.Attempts, 1)
	var last Outcome
	for i := 0; i < attempts; i++ {
		if i > 0 {
			t := time.NewTimer(retry.wait(i-1, last.retryAfter()))
			select {
			case <-ctx.Done():
				t.Stop()
				return deadlineOutcome(ctx, last)
			case <-t.C:
			}
		}
		a, err := be.Do(ctx, Call{Method: http.MethodPost, Path: path, Body: raw, Tier: tier, Origin: o})
		switch {
		case err != nil && ctx.Err() != nil:
			return deadlineOutcome(ctx, last)
		case err != nil:
			last = Outcome{Reason: ReasonBackendError, Message: err.Error(), Transient: true}
		case a.Status == http.StatusOK:
			return Outcome{Status: a.Status, Body: a.Body}
		default:
			last = classify(a)
		}
		if !last.Transient {
			return last
		}
	}
	return last
}

func deadlineOutcome(ctx context.Context, last Outcome) Outcome {
	msg := "the deadline passed before an answer"
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		msg = "cancelled before an answer"
	}
	if last.Message != "" {
		msg += " (last: " + last.Message + ")"
	}
	return Outcome{Reason: ReasonDeadlineExceeded, Message: msg, Status: last.Status, Body: last.Body}
}

func (o Outcome) retryAfter() string { return o.retryAfterHdr }

func classify(a Answer) Outcome {
	o := Outcome{Status: a.Status, Body: jsonOrNil(a.Body), Message: errorMessage(a.Body, a.Status), retryAfterHdr: a.RetryAfter}
	switch {
	case a.Status == http.StatusNotFound:
		o.Reason = ReasonModelNotFound
	case a.Status == http.StatusTooManyRequests || a.Status == http.StatusServiceUnavailable:
		o.Reason, o.Transient = ReasonOverloaded, true
	case a.Status == http.StatusRequestTimeout || a.Status == http.StatusGatewayTimeout || a.Status == http.StatusBadGateway || a.Status >= 500:
		o.Reason, o.Transient = ReasonBackendError, true
	default:
		o.Reason = ReasonInvalidRequest
	}
	return o
}

func jsonOrNil(b []byte) json.RawMessage {
	if json.Valid(b) {
		return b
	}
	return nil
}

// errorMessage digs OpenAI's error.message out of a body.
func errorMessage(b []byte, status int) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
		return e.Error.Message
	}
	return fmt.Sprintf("status %d", status)
}
