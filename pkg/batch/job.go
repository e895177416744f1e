package batch

import (
	"encoding/json"
	"fmt"
	"strings"
)

// The OpenAI Batch API's objects, as its clients read them.

// Batch statuses (OpenAI's lifecycle).
const (
	StatusValidating = "validating"
	StatusFailed     = "failed"
	StatusInProgress = "in_progress"
	StatusFinalizing = "finalizing"
	StatusCompleted  = "completed"
	StatusExpired    = "expired"
	StatusCancelling = "cancelling"
	StatusCancelled  = "cancelled"
)

// Terminal reports whether a status is final.
func Terminal(status string) bool {
	switch status {
	case StatusFailed, StatusCompleted, StatusExpired, StatusCancelled:
		return true
	}
	return false
}

// FileObject is OpenAI's file object.
type FileObject struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
	Status    string `json:"status"`
}

// BatchObject is OpenAI's batch object; the unexported-in-JSON fields
// after it are llmd-kn's own state, kept in storage with it.
type BatchObject struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"`
	Endpoint         string            `json:"endpoint"`
	Errors           *BatchErrors      `json:"errors"`
	InputFileID      string            `json:"input_file_id"`
	CompletionWindow string            `json:"completion_window"`
	Status           string            `json:"status"`
	OutputFileID     *string           `json:"output_file_id"`
	ErrorFileID      *string           `json:"error_file_id"`
	CreatedAt        int64             `json:"created_at"`
	InProgressAt     *int64            `json:"in_progress_at"`
	ExpiresAt        *int64            `json:"expires_at"`
	FinalizingAt     *int64            `json:"finalizing_at"`
	CompletedAt      *int64            `json:"completed_at"`
	FailedAt         *int64            `json:"failed_at"`
	ExpiredAt        *int64            `json:"expired_at"`
	CancellingAt     *int64            `json:"cancelling_at"`
	CancelledAt      *int64            `json:"cancelled_at"`
	RequestCounts    RequestCounts     `json:"request_counts"`
	Usage            *BatchUsage       `json:"usage,omitempty"`
	Metadata         map[string]string `json:"metadata"`
}

// BatchErrors lists why a batch failed validation.
type BatchErrors struct {
	Object string       `json:"object"`
	Data   []BatchError `json:"data"`
}

// BatchError is one validation error.
type BatchError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
	Line    *int    `json:"line"`
}

// RequestCounts counts a batch's lines.
type RequestCounts struct {
	Total     int `json:"total"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
}

// BatchUsage sums the usage of a batch's answers.
type BatchUsage struct {
	InputTokens        int `json:"input_tokens"`
	OutputTokens       int `json:"output_tokens"`
	TotalTokens        int `json:"total_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
}

// stored is a batch as kept in storage: the OpenAI object plus what a
// restarted activator needs to resume it.
type stored struct {
	Batch  BatchObject `json:"batch"`
	Origin Origin      `json:"origin"`
	Tier   string      `json:"tier"`
	Chunks int         `json:"chunks"` // result chunks committed so far
}

// inputLine is one line of a batch input file.
type inputLine struct {
	CustomID string                     `json:"custom_id"`
	Method   string                     `json:"method"`
	URL      string                     `json:"url"`
	Body     map[string]json.RawMessage `json:"body"`
}

// parseLine validates one input line against the batch's endpoint.
func parseLine(raw []byte, endpoint string) (inputLine, error) {
	var l inputLine
	if err := json.Unmarshal(raw, &l); err != nil {
		return l, fmt.Errorf("not a JSON object: %v", err)
	}
	switch {
	case l.CustomID == "":
		return l, fmt.Errorf("custom_id: required")
	case l.Method != "POST":
		return l, fmt.Errorf("method %q: only POST is supported", l.Method)
	case l.URL != endpoint:
		return l, fmt.Errorf("url %q: this batch's endpoint is %s", l.URL, endpoint)
	case l.Body == nil:
		return l, fmt.Errorf("body: required (an OpenAI request)")
	}
	_, chat := l.Body["messages"]
	_, prompt := l.Body["prompt"]
	if endpoint == PathChat && !chat {
		return l, fmt.Errorf("body.messages: required for %s", endpoint)
	}
	if endpoint == PathCompletion && !prompt {
		return l, fmt.Errorf("body.prompt: required for %s", endpoint)
	}
	return l, nil
}

// splitLines returns the non-blank lines of a JSONL file with their line
// numbers (from 1).
func splitLines(data []byte) (lines [][]byte, numbers []int) {
	for i, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		lines = append(lines, []byte(strings.TrimRight(l, "\r")))
		numbers = append(numbers, i+1)
	}
	return lines, numbers
}

// lineResult is one finished line, kept in result chunks until the output
// and error files are written.
type lineResult struct {
	Index int             `json:"i"`
	Line  json.RawMessage `json:"line"` // the output or error file line
	OK    bool            `json:"ok"`
	Usage *usage          `json:"usage,omitempty"`
}

type usage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details,omitempty"`
}

// outputLine is a line of an output or error file.
type outputLine struct {
	ID       string        `json:"id"`
	CustomID *string       `json:"custom_id"`
	Response *lineResponse `json:"response"`
	Error    *lineError    `json:"error"`
}

type lineResponse struct {
	StatusCode int             `json:"status_code"`
	RequestID  string          `json:"request_id"`
	Body       json.RawMessage `json:"body"`
}

type lineError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}
