package reconciler

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// The keys of the config-llmd-autoscaler ConfigMap, Knative-style names of
// autoscaler.Config fields.
const (
	KeyTickInterval             = "tick-interval"
	KeyStableWindow             = "stable-window"
	KeyPanicWindowPercentage    = "panic-window-percentage"
	KeyPanicThresholdPercentage = "panic-threshold-percentage"
	KeyMaxScaleUpRate           = "max-scale-up-rate"
	KeyMaxScaleDownRate         = "max-scale-down-rate"
	KeyScaleDownDelay           = "scale-down-delay"
	KeyScaleToZeroGracePeriod   = "scale-to-zero-grace-period"
	KeyTargetUtilization        = "target-utilization"
	// KeyColdStart is how long a new replica takes to become ready (pod
	// scheduled, image pulled, weights loaded, /health passing); the
	// decider provisions for the arrivals over it at the SLO percentile
	// (autoscaler.Config.ColdStart). 0, the default as in kn-llmd plan's
	// --startup-delay, plans for the mean as Knative does.
	KeyColdStart = "cold-start"
)

// configKeys maps each key to its autoscaler.Config field (and the field's
// path in Config.Validate's errors).
var configKeys = map[string]string{
	KeyTickInterval:             "tickInterval",
	KeyStableWindow:             "stableWindow",
	KeyPanicWindowPercentage:    "panicWindowPercentage",
	KeyPanicThresholdPercentage: "panicThresholdPercentage",
	KeyMaxScaleUpRate:           "maxScaleUpRate",
	KeyMaxScaleDownRate:         "maxScaleDownRate",
	KeyScaleDownDelay:           "scaleDownDelay",
	KeyScaleToZeroGracePeriod:   "scaleToZeroGracePeriod",
	KeyTargetUtilization:        "targetUtilization",
	KeyColdStart:                "coldStart",
}

// ParseConfig returns autoscaler.DefaultConfig with the ConfigMap's keys
// applied. Unknown keys and bad values are errors that name the key; every
// problem is reported. Keys starting with "_" (Knative's _example) are
// ignored.
func ParseConfig(data map[string]string) (autoscaler.Config, error) {
	c := autoscaler.DefaultConfig()
	var errs []error
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasPrefix(k, "_") {
			continue
		}
		v := strings.TrimSpace(data[k])
		bad := func(want string) {
			errs = append(errs, fmt.Errorf("%s: invalid value %q: must be %s", k, v, want))
		}
		dur := func(dst *time.Duration) {
			d, err := time.ParseDuration(v)
			if err != nil {
				bad("a duration like 2s or 1m")
				return
			}
			*dst = d
		}
		num := func(dst *float64) {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				bad("a number")
				return
			}
			*dst = f
		}
		switch k {
		case KeyTickInterval:
			dur(&c.TickInterval)
		case KeyStableWindow:
			dur(&c.StableWindow)
		case KeyPanicWindowPercentage:
			num(&c.PanicWindowPercentage)
		case KeyPanicThresholdPercentage:
			num(&c.PanicThresholdPercentage)
		case KeyMaxScaleUpRate:
			num(&c.MaxScaleUpRate)
		case KeyMaxScaleDownRate:
			num(&c.MaxScaleDownRate)
		case KeyScaleDownDelay:
			dur(&c.ScaleDownDelay)
		case KeyScaleToZeroGracePeriod:
			dur(&c.ScaleToZeroGracePeriod)
		case KeyTargetUtilization:
			num(&c.TargetUtilization)
		case KeyColdStart:
			dur(&c.ColdStart)
		default:
			known := make([]string, 0, len(configKeys))
			for key := range configKeys {
				known = append(known, key)
			}
			sort.Strings(known)
			errs = append(errs, fmt.Errorf("%s: unknown key (known: %s)", k, strings.Join(known, ", ")))
		}
	}
	if len(errs) > 0 {
		return c, errors.Join(errs...)
	}
	if err := c.Validate(); err != nil {
		return c, renameFields(err)
	}
	return c, nil
}

// renameFields rewrites Config.Validate's field paths into ConfigMap keys.
func renameFields(err error) error {
	byField := make(map[string]string, len(configKeys))
	for k, f := range configKeys {
		byField[f] = k
	}
	var out []error
	for _, e := range unjoin(err) {
		var fe *autoscaler.FieldError
		if errors.As(e, &fe) {
			if k, ok := byField[fe.Path]; ok {
				out = append(out, fmt.Errorf("%s: %s", k, fe.Message))
				continue
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// LoadConfigDir reads config-llmd-autoscaler as mounted in a directory, one
// file per key. An empty dir gives the defaults; a missing key is its
// default. Kubernetes' own entries (names starting with "..") and
// subdirectories are skipped.
func LoadConfigDir(dir string) (autoscaler.Config, error) {
	if dir == "" {
		return autoscaler.DefaultConfig(), nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return autoscaler.Config{}, fmt.Errorf("config dir: %w", err)
	}
	data := map[string]string{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "..") {
			continue
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p) // follows the ConfigMap volume's symlinks
		if err != nil {
			return autoscaler.Config{}, fmt.Errorf("config dir: %w", err)
		}
		if st.IsDir() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return autoscaler.Config{}, fmt.Errorf("config dir: %w", err)
		}
		data[name] = string(b)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return autoscaler.Config{}, fmt.Errorf("config dir %s: %w", dir, err)
	}
	return c, nil
}
