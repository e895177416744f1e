package router

import (
	"encoding/json"
	"math"
	"slices"
	"testing"
)

func newTestCycle(t *testing.T, eps []Endpoint) *cycle {
	t.Helper()
	r := mustRouter(t, "")
	c := new(cycle)
	c.reset(r, &Request{Model: "m"}, eps, new(Decision), 1)
	return c
}

func plugin(t *testing.T, name, params string) any {
	t.Helper()
	var raw json.RawMessage
	if params != "" {
		raw = json.RawMessage(params)
	}
	p, err := registry[name].parse(raw)
	if err != nil {
		t.Fatalf("%s %s: %v", name, params, err)
	}
	return p
}

func all(n int) []int {
	c := make([]int, n)
	for i := range c {
		c[i] = i
	}
	return c
}

func TestFilters(t *testing.T) {
	eps := []Endpoint{
		{ID: "ready-both", Ready: true},
		{ID: "not-ready", Ready: false},
		{ID: "ready-prefill-stale", Ready: true, Role: RolePrefill, Stale: true},
		{ID: "ready-decode-full", Ready: true, Role: RoleDecode, KVUsage: 0.95},
		{ID: "ready-decode-queued", Ready: true, Role: RoleDecode, Waiting: 5},
	}
	tests := []struct {
		name, plugin, params string
		eps                  []Endpoint
		want                 []string
	}{
		{"ready keeps ready endpoints", "ready", "", eps, []string{"ready-both", "ready-prefill-stale", "ready-decode-full", "ready-decode-queued"}},
		{"role defaults to decode and both", "role", "", eps, []string{"ready-both", "not-ready", "ready-decode-full", "ready-decode-queued"}},
		{"role prefill only", "role", `{"roles":["prefill"]}`, eps, []string{"ready-prefill-stale"}},
		{"fresh drops stale endpoints", "fresh", "", eps, []string{"ready-both", "not-ready", "ready-decode-full", "ready-decode-queued"}},
		{"fresh keeps all when all are stale", "fresh", "", []Endpoint{{ID: "x", Stale: true}, {ID: "y", Stale: true}}, []string{"x", "y"}},
		{"not-saturated drops full, queued and stale endpoints", "not-saturated", "", eps, []string{"ready-both", "not-ready"}},
		{"not-saturated with a higher queue threshold", "not-saturated", `{"queueThreshold":10}`, eps, []string{"ready-both", "not-ready", "ready-decode-queued"}},
		{"not-saturated keeps all when all are saturated", "not-saturated", "", eps[2:4], []string{"ready-prefill-stale", "ready-decode-full"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCycle(t, tc.eps)
			got := plugin(t, tc.plugin, tc.params).(filter).filter(c, all(len(tc.eps)))
			var ids []string
			for _, i := range got {
				ids = append(ids, tc.eps[i].ID)
			}
			if !slices.Equal(ids, tc.want) {
				t.Fatalf("kept %v, want %v", ids, tc.want)
			}
		})
	}
}

func TestScorers(t *testing.T) {
	tests := []struct {
		name, plugin, params string
		eps                  []Endpoint
		want                 []float64
	}{
		{"kv-cache-utilization is 1 - usage; stale scores 0", "kv-cache-utilization", "",
			[]Endpoint{{KVUsage: 0}, {KVUsage: 0.25}, {KVUsage: 1}, {KVUsage: 0, Stale: true}},
			[]float64{1, 0.75, 0, 0}},
		{"queue normalises waiting between min and max", "queue", "",
			[]Endpoint{{Waiting: 0}, {Waiting: 5}, {Waiting: 10}},
			[]float64{1, 0.5, 0}},
		{"queue all equal scores 1", "queue", "",
			[]Endpoint{{Waiting: 3}, {Waiting: 3}},
			[]float64{1, 1}},
		{"queue leaves stale endpoints out of the range", "queue", "",
			[]Endpoint{{Waiting: 2}, {Waiting: 4}, {Waiting: 0, Stale: true}},
			[]float64{1, 0, 0}},
		{"load-aware: empty 0.5, half 0.25, over threshold 0", "load-aware", "",
			[]Endpoint{{Waiting: 0}, {Waiting: 64}, {Waiting: 500}, {Stale: true}},
			[]float64{0.5, 0.25, 0, 0}},
		{"load-aware with its threshold", "load-aware", `{"queueThreshold":10}`,
			[]Endpoint{{Waiting: 5}},
			[]float64{0.25}},
		{"least-request normalises in-flight; stale does not matter", "least-request", "",
			[]Endpoint{{InFlight: 2}, {InFlight: 6, Stale: true}, {InFlight: 4}},
			[]float64{1, 0, 0.5}},
		{"prefix scorers know nothing of an empty index", "prefix-precise", "",
			[]Endpoint{{ID: "a"}, {ID: "b"}},
			[]float64{0, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCycle(t, tc.eps)
			c.req = &Request{Tokens: tokens(100, 1)}
			out := make([]float64, len(tc.eps))
			plugin(t, tc.plugin, tc.params).(scorer).score(c, all(len(tc.eps)), out)
			for i := range out {
				if math.Abs(out[i]-tc.want[i]) > 1e-12 {
					t.Fatalf("scores %v, want %v", out, tc.want)
				}
			}
		})
	}
}

func TestPickers(t *testing.T) {
	eps := endpoints(4)
	t.Run("max-score picks the highest total", func(t *testing.T) {
		c := newTestCycle(t, eps)
		for range 20 {
			if k := (maxScorePicker{}).pick(c, all(4), []float64{0.1, 0.9, 0.3, 0.5}); k != 1 {
				t.Fatalf("picked %d", k)
			}
		}
	})
	t.Run("max-score breaks ties at random among the best", func(t *testing.T) {
		c := newTestCycle(t, eps)
		seen := map[int]int{}
		for range 400 {
			seen[(maxScorePicker{}).pick(c, all(4), []float64{1, 0.2, 1, 1})]++
		}
		if seen[1] != 0 || seen[0] < 80 || seen[2] < 80 || seen[3] < 80 {
			t.Fatalf("tie-break counts %v", seen)
		}
	})
	t.Run("p2c: the better of two random candidates", func(t *testing.T) {
		c := newTestCycle(t, eps)
		seen := map[int]int{}
		for range 1200 {
			seen[(p2cPicker{}).pick(c, all(4), []float64{0.9, 0.5, 0.2, 0.1})]++
		}
		// Endpoint k wins when drawn with a worse one: 3, 2, 1, 0 of the 6
		// pairs, so about 600, 400, 200, 0 of 1200 draws.
		if seen[3] != 0 || seen[0] < 500 || seen[0] > 700 || seen[2] < 120 || seen[2] > 280 {
			t.Fatalf("p2c counts %v", seen)
		}
		if k := (p2cPicker{}).pick(c, []int{2}, []float64{0, 0, 0, 0}); k != 0 {
			t.Fatalf("single candidate: %d", k)
		}
	})
	t.Run("round-robin takes candidates in turn", func(t *testing.T) {
		c := newTestCycle(t, eps)
		p := roundRobinSpec{}.newPicker()
		var got []int
		for range 6 {
			got = append(got, p.pick(c, all(3), nil))
		}
		if !slices.Equal(got, []int{0, 1, 2, 0, 1, 2}) {
			t.Fatalf("order %v", got)
		}
	})
	t.Run("random covers every candidate", func(t *testing.T) {
		c := newTestCycle(t, eps)
		seen := map[int]bool{}
		for range 200 {
			seen[(randomPicker{}).pick(c, all(4), nil)] = true
		}
		if len(seen) != 4 {
			t.Fatalf("saw %v", seen)
		}
	})
}

func TestPluginsAreDocumented(t *testing.T) {
	for _, p := range Plugins() {
		if p.Help == "" || p.Kind == 0 {
			t.Errorf("plugin %q has no help or kind", p.Name)
		}
	}
}
