package batch

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// ClientOptions configure a Client (the logic of `kn-llmd batch`).
type ClientOptions struct {
	// URL is the Service's (or activator's) base URL, without /v1.
	URL    string
	APIKey string
	// Progress receives progress; Bar redraws one line in place (a
	// terminal), otherwise a plain line is written when the counts change.
	Progress io.Writer
	Bar      bool
	// Poll is the status polling interval (2 s).
	Poll       time.Duration
	HTTPClient *http.Client
}

// Client submits and follows batches through the OpenAI Batch API, with
// the official OpenAI Go SDK.
type Client struct {
	opts ClientOptions
	c    openai.Client
}

// NewClient builds a Client.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.URL == "" {
		return nil, errors.New("--url: required (the Service's URL)")
	}
	if opts.APIKey == "" {
		opts.APIKey = "unused"
	}
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	ro := []option.RequestOption{option.WithBaseURL(strings.TrimSuffix(opts.URL, "/") + "/v1/"), option.WithAPIKey(opts.APIKey), option.WithMaxRetries(3)}
	if opts.HTTPClient != nil {
		ro = append(ro, option.WithHTTPClient(opts.HTTPClient))
	}
	return &Client{opts: opts, c: openai.NewClient(ro...)}, nil
}

// submission is what `submit` remembers next to the input file, so an
// interrupted run picks up the same batch instead of uploading again.
type submission struct {
	URL     string `json:"url"`
	SHA256  string `json:"sha256"`
	FileID  string `json:"file_id"`
	BatchID string `json:"batch_id"`
}

// StatePath is where submit keeps its state for an input file.
func StatePath(input string) string { return input + ".batch.json" }

// SubmitOptions say what to submit.
type SubmitOptions struct {
	Input            string // JSONL file
	Output           string // output JSONL (default: INPUT without .jsonl + .output.jsonl)
	Endpoint         string // default: the first line's url, else /v1/chat/completions
	CompletionWindow string // 24h
	// Detach returns once the batch is created, without following it.
	Detach bool
}

// DefaultOutput is the output file of an input file.
func DefaultOutput(input string) string {
	return strings.TrimSuffix(input, ".jsonl") + ".output.jsonl"
}

// Submit uploads the input (unless an earlier run did), creates the batch,
// follows it to the end and writes its results. It returns the batch.
func (c *Client) Submit(ctx context.Context, so SubmitOptions) (*openai.Batch, error) {
	data, err := os.ReadFile(so.Input)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	sub := submission{URL: c.opts.URL, SHA256: hex.EncodeToString(sum[:])}
	var prev submission
	if raw, err := os.ReadFile(StatePath(so.Input)); err == nil && json.Unmarshal(raw, &prev) == nil &&
		prev.URL == sub.URL && prev.SHA256 == sub.SHA256 && prev.BatchID != "" {
		fmt.Fprintf(c.opts.Progress, "resuming batch %s (from %s)\n", prev.BatchID, StatePath(so.Input))
		sub = prev
	} else {
		endpoint := so.Endpoint
		if endpoint == "" {
			endpoint = firstURL(data)
		}
		window := so.CompletionWindow
		if window == "" {
			window = "24h"
		}
		f, err := c.c.Files.New(ctx, openai.FileNewParams{File: openai.File(bytes.NewReader(data), filepath.Base(so.Input), "application/jsonl"),
			Purpose: openai.FilePurposeBatch})
		if err != nil {
			return nil, fmt.Errorf("uploading %s: %w", so.Input, describe(err))
		}
		sub.FileID = f.ID
		b, err := c.c.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpoint(endpoint),
			CompletionWindow: openai.BatchNewParamsCompletionWindow(window)})
		if err != nil {
			return nil, fmt.Errorf("creating the batch: %w", describe(err))
		}
		sub.BatchID = b.ID
		raw, _ := json.MarshalIndent(sub, "", "  ")
		if err := writeFileAtomic(StatePath(so.Input), raw); err != nil {
			return nil, err
		}
		fmt.Fprintf(c.opts.Progress, "submitted %s as batch %s (file %s)\n", so.Input, b.ID, f.ID)
	}
	if so.Detach {
		return c.Status(ctx, sub.BatchID)
	}
	b, err := c.Follow(ctx, sub.BatchID)
	if err != nil {
		return nil, err
	}
	out := so.Output
	if out == "" {
		out = DefaultOutput(so.Input)
	}
	if err := c.Results(ctx, b, out); err != nil {
		return b, err
	}
	_ = os.Remove(StatePath(so.Input)) // done: a new run is a new batch
	return b, nil
}

func firstURL(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var l struct {
			URL string `json:"url"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.URL != "" {
			return l.URL
		}
	}
	return PathChat
}

// describe makes an SDK error readable (its Error() shows only the status).
func describe(err error) error {
	var e *openai.Error
	if errors.As(err, &e) && e.Message != "" {
		return fmt.Errorf("%d: %s", e.StatusCode, e.Message)
	}
	return err
}

// Status returns a batch.
func (c *Client) Status(ctx context.Context, id string) (*openai.Batch, error) {
	b, err := c.c.Batches.Get(ctx, id)
	if err != nil {
		return nil, describe(err)
	}
	return b, nil
}

// Cancel cancels a batch.
func (c *Client) Cancel(ctx context.Context, id string) (*openai.Batch, error) {
	b, err := c.c.Batches.Cancel(ctx, id)
	if err != nil {
		return nil, describe(err)
	}
	return b, nil
}

// Progress formats a batch's state as one line.
func Progress(b *openai.Batch, bar bool) string {
	rc := b.RequestCounts
	done := rc.Completed + rc.Failed
	s := fmt.Sprintf("%s %s: %d/%d done, %d failed", b.ID, b.Status, done, rc.Total, rc.Failed)
	if bar && rc.Total > 0 {
		const width = 30
		n := int(done * width / rc.Total)
		s = "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "] " + s
	}
	return s
}

// Follow polls a batch until it ends, showing progress.
func (c *Client) Follow(ctx context.Context, id string) (*openai.Batch, error) {
	last := ""
	t := time.NewTicker(c.opts.Poll)
	defer t.Stop()
	for {
		b, err := c.Status(ctx, id)
		if err != nil {
			return nil, err
		}
		line := Progress(b, c.opts.Bar)
		if line != last {
			if c.opts.Bar {
				fmt.Fprintf(c.opts.Progress, "\r%s\x1b[K", line)
			} else {
				fmt.Fprintln(c.opts.Progress, line)
			}
			last = line
		}
		if Terminal(string(b.Status)) {
			if c.opts.Bar {
				fmt.Fprintln(c.opts.Progress)
			}
			return b, nil
		}
		select {
		case <-ctx.Done():
			if c.opts.Bar {
				fmt.Fprintln(c.opts.Progress)
			}
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// Results writes a finished batch's output file to out, and its error
// file, if any, next to it (.errors.jsonl).
func (c *Client) Results(ctx context.Context, b *openai.Batch, out string) error {
	if !Terminal(string(b.Status)) {
		return fmt.Errorf("batch %s is %s: no results yet", b.ID, b.Status)
	}
	files := []struct{ id, path string }{{b.OutputFileID, out}, {b.ErrorFileID, strings.TrimSuffix(out, ".jsonl") + ".errors.jsonl"}}
	for _, f := range files {
		if f.id == "" {
			continue
		}
		resp, err := c.c.Files.Content(ctx, f.id)
		if err != nil {
			return fmt.Errorf("file %s: %w", f.id, describe(err))
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("file %s: %w", f.id, err)
		}
		if err := writeFileAtomic(f.path, data); err != nil {
			return err
		}
		fmt.Fprintf(c.opts.Progress, "wrote %s (%d lines)\n", f.path, bytes.Count(data, []byte("\n")))
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
