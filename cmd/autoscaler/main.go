// Command autoscaler will be the slo.autoscaling.llm-d.ai PodAutoscaler class and the P/D reconcilers.
// It is not built yet (issue #7); until then it only says so, so that no
// one mistakes it for a working component.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "autoscaler: not implemented yet (issue #7); run 'kn-llmd sim' for the vLLM simulator")
	os.Exit(2)
}
