// Command overload drives an OpenAI endpoint (kn-llmd local, the
// activator) with streamed completions of mixed SLO tiers at a fixed rate
// and reports, per tier, what the clients saw: sent, served, shed (429,
// with Retry-After), 503, other, hung (no end within the guard) and
// truncated-but-200 (a 200 stream that ended cleanly without [DONE] or an
// error event), and transport errors (no answer, or a stream aborted
// mid-way: a failure the client sees); the served requests'
// TTFT quantiles and the sheds' answer times. Issue 17's overload scenario:
//
//	kn-llmd local -f svc.yaml --no-autoscale &
//	go run ./test/bench/overload --rate 48 --duration 60s --mix critical:1,standard:2,batch:3
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

type result struct {
	tier       string
	status     int
	retryAfter int
	hung       bool
	truncated  bool
	transport  bool
	ttft       time.Duration // first byte of the body (served) or the answer (refused)
	end        time.Duration
	sent       time.Duration // after the run's start
}

func main() {
	url := flag.String("url", "http://127.0.0.1:8080", "the endpoint")
	host := flag.String("host", "", "Host header (the Service's host); empty: the URL's")
	model := flag.String("model", "meta-llama/Llama-3.1-8B-Instruct", "model field")
	rate := flag.Float64("rate", 10, "requests per second, evenly spaced")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	mixFlag := flag.String("mix", "critical:1,standard:2,batch:3", "tiers and their weights")
	promptWords := flag.Int("prompt-words", 200, "words in each prompt (distinct prompts)")
	maxTokens := flag.Int("max-tokens", 128, "max_tokens of each request (ignore_eos)")
	guard := flag.Duration("guard", 5*time.Minute, "a request not ended by then counts as hung")
	outFile := flag.String("out", "", "also write one JSON line per request to this file (tier, status, retry_after, hung, truncated, transport, ttft_ms, end_ms, sent_ms: when it was sent after the start)")
	flag.Parse()

	var mix []string
	for _, part := range strings.Split(*mixFlag, ",") {
		name, w, ok := strings.Cut(part, ":")
		n, err := strconv.Atoi(w)
		if !ok || err != nil || n < 0 || name == "" {
			fmt.Fprintf(os.Stderr, "bad --mix entry %q (want tier:weight)\n", part)
			os.Exit(2)
		}
		for range n {
			mix = append(mix, name)
		}
	}
	if len(mix) == 0 || !(*rate > 0) {
		fmt.Fprintln(os.Stderr, "--mix needs a positive weight and --rate a positive rate")
		os.Exit(2)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	interval := time.Duration(float64(time.Second) / *rate)
	n := int(*duration / interval)
	out := make([]result, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = send(client, *url, *host, *model, mix[i%len(mix)], i, *promptWords, *maxTokens, *guard)
			out[i].sent = time.Duration(i) * interval
		}()
	}
	sentFor := time.Since(start)
	wg.Wait()
	report(out, sentFor, time.Since(start))
	if *outFile != "" {
		if err := writeResults(*outFile, out); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// writeResults writes one JSON line per request.
func writeResults(path string, out []result) error {
	var b strings.Builder
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, r := range out {
		line, _ := json.Marshal(map[string]any{"tier": r.tier, "status": r.status, "retry_after": r.retryAfter,
			"hung": r.hung, "truncated": r.truncated, "transport": r.transport,
			"ttft_ms": ms(r.ttft), "end_ms": ms(r.end), "sent_ms": ms(r.sent)})
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing the per-request results: %w", err)
	}
	return nil
}

func send(client *http.Client, url, host, model, tier string, i, words, maxTokens int, guard time.Duration) result {
	r := result{tier: tier}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "request %d:", i)
	for w := range words {
		fmt.Fprintf(&b, " w%d", (i*7919+w*31)%50000)
	}
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": b.String(), "max_tokens": maxTokens,
		"ignore_eos": true, "stream": true})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Llm-D-Slo-Tier", tier)
	if host != "" {
		req.Host = host
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		r.hung = ctx.Err() != nil
		r.transport = !r.hung
		r.end = time.Since(t0)
		return r
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	r.retryAfter, _ = strconv.Atoi(resp.Header.Get("Retry-After"))
	br := bufio.NewReader(resp.Body)
	first := true
	done, failed := false, false
	for {
		line, err := br.ReadString('\n')
		if first && len(line) > 0 {
			r.ttft, first = time.Since(t0), false
		}
		if l := strings.TrimSpace(line); l == "data: [DONE]" {
			done = true
		} else if strings.HasPrefix(l, `data: {"error"`) {
			failed = true // an OpenAI-shaped error event: a visible failure
		}
		if err != nil {
			// Anything but a clean end (the activator aborts a stream
			// whose pod failed) is a failure the client sees.
			failed = failed || !errors.Is(err, io.EOF)
			break
		}
	}
	r.end = time.Since(t0)
	switch {
	case ctx.Err() != nil:
		r.hung = true
	case r.status == http.StatusOK && failed && !done:
		r.transport = true
	case r.status == http.StatusOK && !done:
		r.truncated = true
	}
	return r
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(int(q*float64(len(ds))), len(ds)-1)]
}

// slowShed is the bound on a shed's answer time: the sheds
// answered later are counted apart.
const slowShed = 50 * time.Millisecond

func report(out []result, sentFor, total time.Duration) {
	type agg struct {
		sent, ok, shed, unavailable, other, hung, truncated, transport, noRetryAfter, slowShed int
		ttft, shedTime                                                                         []time.Duration
		retryAfter                                                                             []int
	}
	by := map[string]*agg{}
	var order []string
	for _, r := range out {
		a := by[r.tier]
		if a == nil {
			a = &agg{}
			by[r.tier] = a
			order = append(order, r.tier)
		}
		a.sent++
		switch {
		case r.hung:
			a.hung++
		case r.transport:
			a.transport++
		case r.truncated:
			a.truncated++
		case r.status == http.StatusOK:
			a.ok++
			a.ttft = append(a.ttft, r.ttft)
		case r.status == http.StatusTooManyRequests:
			a.shed++
			a.shedTime = append(a.shedTime, r.end)
			if r.end > slowShed {
				a.slowShed++
			}
			a.retryAfter = append(a.retryAfter, r.retryAfter)
			if r.retryAfter < 1 {
				a.noRetryAfter++
			}
		case r.status == http.StatusServiceUnavailable:
			a.unavailable++
		default:
			a.other++
		}
	}
	fmt.Printf("sent %d requests in %v; all ended after %v\n", len(out), sentFor.Round(time.Millisecond), total.Round(time.Millisecond))
	fmt.Printf("%-9s %5s %5s %5s %4s %5s %4s %5s %5s %9s %9s %9s %9s %9s %9s %s\n", "tier", "sent", "ok", "429", "503", "other", "hung", "trunc", "xport",
		"ttft-p50", "ttft-p90", "ttft-p99", "shed-p99", "shed-max", "shed>50ms", "retry-after min..max")
	for _, name := range order {
		a := by[name]
		ra := "-"
		if len(a.retryAfter) > 0 {
			ra = fmt.Sprintf("%d..%d s (%d missing)", slices.Min(a.retryAfter), slices.Max(a.retryAfter), a.noRetryAfter)
		}
		r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
		fmt.Printf("%-9s %5d %5d %5d %4d %5d %4d %5d %5d %9s %9s %9s %9s %9s %9d %s\n", name, a.sent, a.ok, a.shed, a.unavailable, a.other, a.hung,
			a.truncated, a.transport, r(quantile(a.ttft, 0.5)), r(quantile(a.ttft, 0.9)), r(quantile(a.ttft, 0.99)),
			r(quantile(a.shedTime, 0.99)), r(quantile(a.shedTime, 1)), a.slowShed, ra)
	}
}
