// Command kn-llmd is the llmd-kn command line and kn plugin: `local` runs
// Knative Services on one machine, `sim` the vLLM simulator, `bench` the
// real-time load generator, `plan` the same router in virtual time. It only
// wires flags to packages; the logic lives in pkg/.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "kn-llmd",
		Short:         "llm-d's LLM-aware serving on Knative: local runtime, simulator, benchmarks",
		SilenceErrors: true,
	}
	root.AddCommand(newSimCommand())
	root.AddCommand(newLocalCmd())
	root.AddCommand(newBenchCmd())
	planCmd := newPlanCmd()
	planCmd.AddCommand(newPlanVariantsCmd())
	root.AddCommand(planCmd)
	root.AddCommand(newBatchCmd())
	return root
}

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kn-llmd:", err)
		os.Exit(1)
	}
}
