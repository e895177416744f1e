package reconciler

import "testing"

// FuzzParseConfig: any value of any key parses or is refused with an
// error, never a panic, and what parses is a valid decider configuration.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range [][2]string{
		{KeyColdStart, "45s"}, {KeyColdStart, "-1s"}, {KeyColdStart, "9999999999h"}, {KeyTargetUtilization, "NaN"},
		{KeyMaxScaleUpRate, "+Inf"}, {KeyStableWindow, "1ns"}, {"_example", "x"}, {"unknown", ""},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, key, value string) {
		c, err := ParseConfig(map[string]string{key: value})
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("%s=%q parsed into an invalid config: %v", key, value, err)
		}
	})
}
