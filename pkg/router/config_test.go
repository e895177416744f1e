package router

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	want := []string{"default", "kv-precise", "least-request", "prefill", "prefill-approx", "prefill-precise", "prefix-approx", "round-robin", "ttft-cost"}
	if got := cfg.ProfileNames(); !slices.Equal(got, want) {
		t.Fatalf("profiles %v, want %v", got, want)
	}
	if cfg.DefaultProfile != "default" || cfg.ApproximateIndex != (ApproxIndexConfig{64, 2048, 0}) ||
		cfg.PreciseIndex != (PreciseIndexConfig{16, 0, 262144}) {
		t.Fatalf("defaults %+v", cfg)
	}
	// The baselines carry the peers' weights.
	weights := func(name string) map[string]float64 {
		m := map[string]float64{}
		for _, s := range cfg.specs[name].scorers {
			m[s.name] = s.weight
		}
		return m
	}
	if w := weights("kv-precise"); w["prefix-precise"] != 3 || w["kv-cache-utilization"] != 2 || w["queue"] != 2 {
		t.Errorf("kv-precise weights %v", w)
	}
	if w := weights("prefix-approx"); w["prefix-approx"] != 1 || w["kv-cache-utilization"] != 1 || w["queue"] != 1 {
		t.Errorf("prefix-approx weights %v", w)
	}
	if p := cfg.specs["least-request"].picker.name; p != "p2c" {
		t.Errorf("least-request picker %s", p)
	}
}

func TestParseConfigOverlays(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
defaultProfile: mine
approximateIndex:
  lruCapacity: 1000
profiles:
- name: mine
  plugins:
  - name: ready
  - name: queue
    weight: 2.5
  - name: load-aware
    parameters: {queueThreshold: 64}
  - name: random
- name: round-robin   # replaces the built-in
  plugins:
  - name: round-robin
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DefaultProfile != "mine" || cfg.ApproximateIndex.LRUCapacity != 1000 || cfg.ApproximateIndex.BlockSize != 64 {
		t.Fatalf("overlay %+v", cfg)
	}
	if len(cfg.specs["round-robin"].filters) != 0 || len(cfg.specs["mine"].scorers) != 2 || cfg.specs["mine"].scorers[0].weight != 2.5 {
		t.Fatalf("profiles not overlaid: %+v", cfg.Profiles)
	}
	if len(cfg.Profiles) != 10 {
		t.Fatalf("%d profiles, want the 9 built-in plus mine", len(cfg.Profiles))
	}
	// JSON is YAML too.
	if _, err := ParseConfig([]byte(`{"profiles":[{"name":"j","plugins":[{"name":"ready"}]}]}`)); err != nil {
		t.Fatal(err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", "profile: x", `unknown field "profile"`},
		{"unknown index field", "approximateIndex: {blockSiz: 3}", `approximateIndex: unknown field "blockSiz"`},
		{"bad index value", "preciseIndex: {blockSize: 0}", "preciseIndex.blockSize: must be in [1, 65536], got 0"},
		{"index value of the wrong type", "preciseIndex: {blockSize: big}", "preciseIndex.blockSize: cannot use a string as an integer"},
		{"unknown profile field", "profiles: [{name: a, plugin: []}]", `profiles[0]: unknown field "plugin"`},
		{"bad profile name", "profiles: [{name: Bad_Name}]", `profiles[0].name: "Bad_Name" is not a valid profile name`},
		{"duplicate profile", "profiles: [{name: a}, {name: a}]", `profiles[1].name: duplicate profile "a"`},
		{"unknown plugin", "profiles: [{name: a, plugins: [{name: ready}, {name: teleport}]}]", `profiles[0].plugins[1].name: unknown plugin "teleport"`},
		{"unknown plugin field", "profiles: [{name: a, plugins: [{name: queue, wieght: 2}]}]", `profiles[0].plugins[0]: unknown field "wieght"`},
		{"plugin twice", "profiles: [{name: a, plugins: [{name: queue}, {name: queue}]}]", `profiles[0].plugins[1].name: plugin "queue" appears twice`},
		{"two pickers", "profiles: [{name: a, plugins: [{name: random}, {name: p2c}]}]", `profiles[0].plugins[1].name: profile has a second picker`},
		{"weight on a filter", "profiles: [{name: a, plugins: [{name: ready, weight: 2}]}]", `profiles[0].plugins[0].weight: only scorers take a weight`},
		{"negative weight", "profiles: [{name: a, plugins: [{name: queue, weight: -1}]}]", `profiles[0].plugins[0].weight: must be a positive number`},
		{"parameters on a plugin without any", "profiles: [{name: a, plugins: [{name: queue, parameters: {x: 1}}]}]", `profiles[0].plugins[0].parameters: unknown field "x"`},
		{"unknown parameter", "profiles: [{name: a}, {name: b, plugins: [{name: load-aware, parameters: {threshold: 3}}]}]", `profiles[1].plugins[0].parameters: unknown field "threshold"`},
		{"bad parameter value", "profiles: [{name: a}, {name: b}, {name: c, plugins: [{name: ready}, {name: load-aware, parameters: {queueThreshold: 0}}]}]", "profiles[2].plugins[1].parameters.queueThreshold: must be >= 1, got 0"},
		{"parameter of the wrong type", "profiles: [{name: a, plugins: [{name: pd-decider, parameters: {threshold: lots}}]}]", "profiles[0].plugins[0].parameters.threshold: cannot use a string as an integer"},
		{"parameters not a mapping", "profiles: [{name: a, plugins: [{name: role, parameters: [decode]}]}]", "profiles[0].plugins[0].parameters: cannot use an array as a mapping"},
		{"bad role", "profiles: [{name: a, plugins: [{name: role, parameters: {roles: [decode, encode]}}]}]", `profiles[0].plugins[0].parameters.roles[1]: unknown role "encode"`},
		{"empty roles", "profiles: [{name: a, plugins: [{name: role, parameters: {roles: []}}]}]", "profiles[0].plugins[0].parameters.roles: must list at least one"},
		{"unknown engine profile", "profiles: [{name: a, plugins: [{name: ttft-cost, parameters: {profile: gpt-9}}]}]", `profiles[0].plugins[0].parameters.profile: unknown profile "gpt-9"`},
		{"negative threshold", "profiles: [{name: a, plugins: [{name: pd-decider, parameters: {threshold: -1}}]}]", "profiles[0].plugins[0].parameters.threshold: must be >= 0"},
		{"unknown prefill profile", "profiles: [{name: a, plugins: [{name: pd-decider, parameters: {prefillProfile: nope}}]}]", `profiles[0].plugins[0].parameters.prefillProfile: unknown profile "nope"`},
		{"own prefill profile", "profiles: [{name: a, plugins: [{name: queue}, {name: pd-decider, parameters: {prefillProfile: a}}]}]", "profiles[0].plugins[1].parameters.prefillProfile: a profile cannot be its own prefill profile"},
		{"prefill profile with a decider", "profiles: [{name: a, plugins: [{name: pd-decider, parameters: {prefillProfile: default}}]}]", `profiles[0].plugins[0].parameters.prefillProfile: profile "default" has a pd-decider itself`},
		{"unknown default profile", "defaultProfile: fast", `defaultProfile: unknown profile "fast"`},
		{"bad saturation threshold", "profiles: [{name: a, plugins: [{name: not-saturated, parameters: {kvThreshold: 2}}]}]", "profiles[0].plugins[0].parameters.kvThreshold: must be in (0, 1]"},
		{"duplicate YAML key", "defaultProfile: a\ndefaultProfile: b", "already set in map"},
		{"not a mapping", "- a\n- b", "cannot use an array as a mapping"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a ConfigError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(DefaultConfigYAML))
	f.Add([]byte("profiles: [{name: a, plugins: [{name: queue, weight: 2}, {name: pd-decider, parameters: {threshold: 3, prefillProfile: prefill}}]}]"))
	f.Add([]byte("approximateIndex: {blockSize: 48}\npreciseIndex: {blockSize: 16, hashSeed: 7}"))
	f.Add([]byte("{\"defaultProfile\": \"round-robin\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a ConfigError", err)
			}
			return
		}
		// Whatever parses builds a Router whose profiles all decide.
		r, err := New(cfg, Options{Seed: 1})
		if err != nil {
			t.Fatalf("parsed config does not build: %v", err)
		}
		eps := endpoints(3)
		eps[2].Role = RolePrefill
		for _, name := range cfg.ProfileNames() {
			s, err := r.Scheduler(name)
			if err != nil {
				t.Fatal(err)
			}
			var d Decision
			if err := s.Decide(&d, &Request{Tokens: tokens(700, 1)}, eps); err != nil && err != ErrNoEndpoint {
				t.Fatalf("profile %s: %v", name, err)
			}
		}
	})
}
