package reconciler

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/internaltls"
	"github.com/llmd-kn/llmd-kn/pkg/webhook/certs"
)

// authFixture is a StatsAPI whose writers must present a StaticToken, on a
// fake clock, with small limits.
func authFixture(t *testing.T, lim Limits, caller Caller) (*apiFixture, func(path, tok, body string) (int, string)) {
	t.Helper()
	f := newAPIFixture(t)
	f.api.Auth = StaticToken{Token: "s3cret", Caller: caller}
	f.api.Limits = lim
	f.srv.Close()
	f.srv = httptest.NewServer(f.api.Handler())
	t.Cleanup(f.srv.Close)
	return f, func(path, tok, body string) (int, string) {
		req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, resp.Header.Get("Retry-After"))
		return resp.StatusCode, b.String()
	}
}

// TestStatsAPIRefusesForgedReports: issue 17's failure 6 at the API: a
// report or poke without the token, or with another, moves nothing; a
// caller bound to a pod may not report as another activator.
func TestStatsAPIRefusesForgedReports(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f, post := authFixture(t, Limits{}, Caller{User: "system:serviceaccount:llmd-kn:llmd-activator", Pod: "act-1"})
	for _, tc := range []struct {
		name, path, tok, body string
		code                  int
	}{
		{"stats without a token", "/v1/stats", "", report("act-1", 5000, 1e6, 1e5, 9), http.StatusUnauthorized},
		{"stats with a wrong token", "/v1/stats", "guess", report("act-1", 5000, 1e6, 1e5, 9), http.StatusUnauthorized},
		{"poke without a token", "/v1/poke", "", `{"namespace":"default","name":"chat-00001"}`, http.StatusUnauthorized},
		{"report as another activator", "/v1/stats", "s3cret", report("act-2", 5000, 1e6, 1e5, 9), http.StatusForbidden},
		{"genuine report", "/v1/stats", "s3cret", report("act-1", 10, 100, 10, 0), http.StatusAccepted},
		{"genuine poke", "/v1/poke", "s3cret", `{"namespace":"default","name":"chat-00001"}`, http.StatusAccepted},
	} {
		if code, _ := post(tc.path, tc.tok, tc.body); code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.code)
		}
	}
	if len(f.pokes) != 1 {
		t.Errorf("pokes %v, want the genuine one only", f.pokes)
	}
	l, ok := f.api.Stats.Load(f.now, "default/chat-00001")
	if !ok || l.Queued != 0 {
		t.Errorf("load %+v (ok %v): a forged report was counted", l, ok)
	}
	// The recommendations stay readable without a token.
	resp, err := http.Get(f.srv.URL + "/v1/recommendations")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v1/recommendations: %s", resp.Status)
	}
	f.srv.Close()
	http.DefaultClient.CloseIdleConnections()
}

// TestStatsAPILimitsCallers: a caller gets its burst, then 429 with a
// Retry-After until its bucket refills; the per-address bound applies
// before authentication, so that forged tokens cannot make unbounded
// token reviews.
func TestStatsAPILimitsCallers(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f, post := authFixture(t, Limits{PerCaller: 1, Burst: 3, PerAddress: 5}, Caller{User: "activator"})
	body := report("a", 1, 1, 1, 0)
	for i := range 3 {
		if code, _ := post("/v1/stats", "s3cret", body); code != http.StatusAccepted {
			t.Fatalf("report %d within the burst: %d", i, code)
		}
	}
	if code, retry := post("/v1/stats", "s3cret", body); code != http.StatusTooManyRequests || retry != "1" {
		t.Errorf("over the burst: %d, Retry-After %q; want 429, 1", code, retry)
	}
	f.now = f.now.Add(time.Second)
	if code, _ := post("/v1/stats", "s3cret", body); code != http.StatusAccepted {
		t.Errorf("a second later: %d, want 202 (one token refilled)", code)
	}
	// The address's bucket (burst 10) bounds how many forged tokens reach
	// the authenticator; the rest are refused before it.
	reviewed := 0
	for range 20 {
		switch code, _ := post("/v1/stats", "forged", body); code {
		case http.StatusUnauthorized:
			reviewed++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("forged token: %d", code)
		}
	}
	if reviewed > 10 {
		t.Errorf("%d of 20 forged-token requests reached the authenticator, want at most the address's burst 10", reviewed)
	}
	f.srv.Close()
	http.DefaultClient.CloseIdleConnections()
}

// TestGuardBoundsConcurrentBodies: bodies read at once are bounded; one
// more is refused at once (429) rather than buffered, and a released slot
// is free again.
func TestGuardBoundsConcurrentBodies(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	g := newGuard(StaticToken{Token: "s3cret", Caller: Caller{User: "activator"}}, Limits{Concurrent: 2}, func() time.Time { return now })
	admit := func() (int, func()) {
		req := httptest.NewRequest(http.MethodPost, "/v1/stats", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer s3cret")
		w := httptest.NewRecorder()
		_, release, ok := g.admit(w, req)
		if !ok {
			return w.Code, nil
		}
		return http.StatusOK, release
	}
	_, r1 := admit()
	_, r2 := admit()
	if r1 == nil || r2 == nil {
		t.Fatal("the first two were refused")
	}
	if code, _ := admit(); code != http.StatusTooManyRequests {
		t.Errorf("a third while two are read: %d, want 429", code)
	}
	r1()
	code, r3 := admit()
	if code != http.StatusOK {
		t.Errorf("after a release: %d, want admitted", code)
	}
	r2()
	r3()
}

// TestRateLimiterForgetsIdleCallers: the table of buckets stays bounded;
// a full table makes room by dropping buckets that have refilled.
func TestRateLimiterForgetsIdleCallers(t *testing.T) {
	l := newRateLimiter(1, 2, 2)
	t0 := time.Unix(0, 0)
	if !l.allow("a", t0) || !l.allow("b", t0) {
		t.Fatal("first requests refused")
	}
	if l.allow("c", t0) {
		t.Error("a third caller while both buckets are in use: allowed, want refused (table full)")
	}
	if !l.allow("c", t0.Add(5*time.Second)) {
		t.Error("a third caller after the others refilled: refused")
	}
	if len(l.buckets) > 2 {
		t.Errorf("%d buckets, want at most 2", len(l.buckets))
	}
}

// TestReporterSendsItsToken: the activator's Reporter, given the projected
// token's file, is accepted by the API; it re-reads the file, so a rotated
// token is used from the next report on.
func TestReporterSendsItsToken(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f, _ := authFixture(t, Limits{}, Caller{User: "activator"})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("stale\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	rep, err := activator.NewReporter(activator.ReporterOptions{URL: f.srv.URL, Activator: "act-1", TokenFile: tokenFile,
		Interval: 10 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	stats := func() []activator.RevisionStats {
		return []activator.RevisionStats{{Revision: "default/chat-00001", RequestsByTier: map[string]int64{"standard": 1}}}
	}
	go func() { rep.Run(ctx, stats); close(done) }()
	defer func() { cancel(); <-done }()
	failures := func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "llmd_activator_autoscaler_report_failures_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}
	deadline := time.Now().Add(10 * time.Second)
	for failures() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a report with a stale token was not refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, ok := f.api.Stats.Load(time.Unix(1_000_000, 0), "default/chat-00001"); ok {
		t.Fatal("a report with a stale token was counted")
	}
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil { // the kubelet rotates it
		t.Fatal(err)
	}
	for {
		if _, ok := f.api.Stats.Load(time.Unix(1_000_000, 0), "default/chat-00001"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no report accepted after the token was rotated")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	f.srv.Close()
	http.DefaultClient.CloseIdleConnections()
}

// countingAuth is a StaticToken that counts the tokens it was shown.
type countingAuth struct {
	StaticToken
	shown atomic.Int64
}

func (c *countingAuth) Authenticate(ctx context.Context, token string) (Caller, error) {
	c.shown.Add(1)
	return c.StaticToken.Authenticate(ctx, token)
}

// TestReporterOverTLS: the activator's Reporter and the autoscaler's stats
// API over TLS on loopback (issue 17: the token no longer travels in
// clear). With the autoscaler's CA bundle a report is accepted; a reporter
// that speaks plaintext to the TLS port, or trusts another CA, or expects
// another name, gets nothing counted and never shows its token.
func TestReporterOverTLS(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const name = "llmd-autoscaler.llmd-kn.svc"
	pki := func() string {
		dir := t.TempDir()
		ca, cert, key, err := certs.SelfSigned(time.Now(), time.Hour, time.Hour, []string{name})
		if err != nil {
			t.Fatal(err)
		}
		for f, b := range map[string][]byte{internaltls.CABundleFile: ca, internaltls.CertFile: cert, internaltls.KeyFile: key} {
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	good, other := pki(), pki()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		test, scheme, caDir, name string
		accepted                  bool
	}{
		{"the autoscaler's CA", "https", good, name, true},
		{"plaintext to the TLS port", "http", "", "", false},
		{"another CA", "https", other, name, false},
		{"another name", "https", good, "llmd-autoscaler.other.svc", false},
	} {
		t.Run(tc.test, func(t *testing.T) {
			f := newAPIFixture(t)
			f.srv.Close()
			auth := &countingAuth{StaticToken: StaticToken{Token: "s3cret", Caller: Caller{User: "activator"}}}
			f.api.Auth = auth
			srvTLS, err := internaltls.ServerConfig(filepath.Join(good, internaltls.CertFile), filepath.Join(good, internaltls.KeyFile))
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: f.api.Handler(), ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 5 * time.Second}
			served := make(chan struct{})
			go func() { _ = srv.Serve(tls.NewListener(ln, srvTLS)); close(served) }()

			opts := activator.ReporterOptions{URL: tc.scheme + "://" + ln.Addr().String(), Activator: "act-1", TokenFile: tokenFile,
				Interval: 10 * time.Millisecond, Registerer: prometheus.NewRegistry()}
			if tc.caDir != "" {
				opts.CAFile, opts.ServerName = filepath.Join(tc.caDir, internaltls.CABundleFile), tc.name
			}
			rep, err := activator.NewReporter(opts)
			if err != nil {
				t.Fatal(err)
			}
			gathered := prometheus.Gatherer(opts.Registerer.(*prometheus.Registry))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				rep.Run(ctx, func() []activator.RevisionStats {
					return []activator.RevisionStats{{Revision: "default/chat-00001", RequestsByTier: map[string]int64{"standard": 1}}}
				})
				close(done)
			}()
			loaded := func() bool { _, ok := f.api.Stats.Load(time.Unix(1_000_000, 0), "default/chat-00001"); return ok }
			failed := func() bool {
				mfs, _ := gathered.Gather()
				for _, mf := range mfs {
					if mf.GetName() == "llmd_activator_autoscaler_report_failures_total" {
						return mf.GetMetric()[0].GetCounter().GetValue() >= 3
					}
				}
				return false
			}
			deadline := time.Now().Add(20 * time.Second)
			for !loaded() && !failed() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			<-done
			_ = srv.Close()
			<-served
			if got := loaded(); got != tc.accepted {
				t.Errorf("report counted: %v, want %v", got, tc.accepted)
			}
			if !tc.accepted && auth.shown.Load() != 0 {
				t.Errorf("the autoscaler was shown %d tokens by a reporter that should not have reached it", auth.shown.Load())
			}
			if !tc.accepted && !failed() {
				t.Error("no failed report counted")
			}
		})
	}
}
