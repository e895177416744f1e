// Command webhook will be admission for llm-d.ai/* annotations on Knative Services.
// It is not built yet (issue #5); until then it only says so, so that no
// one mistakes it for a working component.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "webhook: not implemented yet (issue #5); run 'kn-llmd sim' for the vLLM simulator")
	os.Exit(2)
}
