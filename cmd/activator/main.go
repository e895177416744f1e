// Command activator will be the data plane (OpenAI-compatible front, flow control, LLM-aware routing, P/D orchestration).
// It is not built yet (issue #3); until then it only says so, so that no
// one mistakes it for a working component.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "activator: not implemented yet (issue #3); run 'kn-llmd sim' for the vLLM simulator")
	os.Exit(2)
}
