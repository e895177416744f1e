package config_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// family is a metric family's type and label names.
type family struct {
	typ    string // counter, gauge, histogram
	labels []string
}

// describer is a prometheus.Registerer that records what is registered.
type describer struct {
	prometheus.Registerer
	descs []*prometheus.Desc
}

func (d *describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		d.descs = append(d.descs, desc)
	}
	return d.Registerer.Register(c)
}

func (d *describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

// activatorFamilies registers the activator's metrics, as cmd/activator
// does, and returns them by name. Label names come from the descriptors,
// since vectors without children gather nothing.
func activatorFamilies(t *testing.T) map[string]family {
	t.Helper()
	reg := prometheus.NewRegistry()
	d := &describer{Registerer: reg}
	act, err := activator.New(activator.Options{Registerer: d})
	if err != nil {
		t.Fatal(err)
	}
	act.Close()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	for _, mf := range mfs {
		types[mf.GetName()] = strings.ToLower(mf.GetType().String())
	}
	out := map[string]family{}
	for _, desc := range d.descs {
		m := descRE.FindStringSubmatch(desc.String())
		if m == nil {
			t.Fatalf("cannot read the descriptor %s", desc)
		}
		var labels []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(l), "c("), ")"); l != "" {
				labels = append(labels, l)
			}
		}
		typ := types[m[1]] // known for gathered families only
		if typ == "" && strings.HasSuffix(m[1], "_seconds") {
			typ = "histogram"
		}
		out[m[1]] = family{typ: typ, labels: labels}
	}
	if len(out) < 5 {
		t.Fatalf("the activator registered %d metrics: the descriptors were not read", len(out))
	}
	return out
}

// vllmFamilies scrapes the vLLM simulator, which exports vLLM's metric names.
func vllmFamilies(t *testing.T) map[string]family {
	t.Helper()
	sim, err := vllmsim.New(vllmsim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return parseExposition(t, resp.Body)
}

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s`)
var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)

// parseExposition reads the Prometheus text format: families from # TYPE
// lines, label names from the samples.
func parseExposition(t *testing.T, r io.Reader) map[string]family {
	t.Helper()
	out := map[string]family{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = family{typ: f[3]}
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := familyOf(m[1], out)
		fam, ok := out[name]
		if !ok {
			continue
		}
		for _, l := range labelRE.FindAllStringSubmatch(m[3], -1) {
			if l[1] != "le" && !slices.Contains(fam.labels, l[1]) {
				fam.labels = append(fam.labels, l[1])
			}
		}
		out[name] = fam
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no metrics scraped")
	}
	return out
}

// familyOf maps a series name to its family: a histogram's _bucket, _sum
// and _count series belong to the histogram.
func familyOf(series string, fams map[string]family) string {
	if _, ok := fams[series]; ok {
		return series
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(series, suf); ok {
			if f, ok := fams[base]; ok && f.typ == "histogram" {
				return base
			}
		}
	}
	return series
}

var (
	metricRE  = regexp.MustCompile(`\b(llmd_[a-z0-9_]+|vllm:[a-z0-9_:]+)(\{[^}]*\})?`)
	groupByRE = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// TestDashboardQueriesExistingMetrics: every PromQL expression of the
// Grafana dashboard names metrics the activator (or vLLM, as its simulator
// exports them) has, with labels those metrics carry, and the dashboard
// has the panels an operator looks for.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo(t), "config", "dashboards", "llmd-activator.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string  `json:"title"`
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("llmd-activator.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("title %q, uid %q: both needed for import", dash.Title, dash.UID)
	}
	fams := activatorFamilies(t)
	for name, f := range vllmFamilies(t) {
		fams[name] = f
	}

	var exprs []string
	titles := map[string]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			titles[p.Title] = true
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: empty expression", p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) == nil && q.Query != "" {
			exprs = append(exprs, q.Query)
		}
	}

	used := map[string]bool{}
	for _, e := range exprs {
		ms := metricRE.FindAllStringSubmatch(e, -1)
		if len(ms) == 0 {
			t.Errorf("%s: names no llmd_ or vllm: metric", e)
		}
		var labels []string
		for _, m := range ms {
			name := familyOf(m[1], fams)
			f, ok := fams[name]
			if !ok {
				t.Errorf("%s: no metric %s", e, m[1])
				continue
			}
			if name != m[1] && f.typ != "histogram" {
				t.Errorf("%s: %s is not a histogram series", e, m[1])
			}
			used[name] = true
			labels = append(labels, f.labels...)
			if strings.HasSuffix(m[1], "_bucket") {
				labels = append(labels, "le")
			}
			for _, l := range regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`).FindAllStringSubmatch(m[2], -1) {
				if !slices.Contains(f.labels, l[1]) {
					t.Errorf("%s: %s has no label %q (has %v)", e, name, l[1], f.labels)
				}
			}
		}
		for _, g := range groupByRE.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !slices.Contains(labels, l) {
					t.Errorf("%s: grouping by %q, which none of its metrics has", e, l)
				}
			}
		}
	}
	for _, want := range []string{
		"llmd_activator_requests_total", "llmd_activator_time_to_first_token_seconds",
		"llmd_activator_time_per_output_token_seconds", "llmd_activator_queued_requests",
		"llmd_activator_tokens_total", "llmd_activator_pd_decisions_total", "vllm:num_requests_running",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
	for _, q := range []string{"histogram_quantile(0.9, sum by (le, tier) (rate(llmd_activator_time_to_first_token_seconds_bucket",
		"histogram_quantile(0.9, sum by (le, tier) (rate(llmd_activator_time_per_output_token_seconds_bucket"} {
		if !slices.ContainsFunc(exprs, func(e string) bool { return strings.Contains(e, q) }) {
			t.Errorf("no p90-by-tier query %s...", q)
		}
	}
}

type panel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}
