package main

import (
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers" // s3://, gs://, azblob:// for --batch-storage

	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/llmd-kn/llmd-kn/pkg/batch"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
)

// newBatchCmd is `kn-llmd batch`: submit, status, results, cancel through
// the OpenAI Batch API the activator serves.
func newBatchCmd() *cobra.Command {
	var url, apiKey string
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "batch",
		Short: "Run a JSONL file of OpenAI requests as a batch (OpenAI Batch API) in the batch tier",
	}
	cmd.PersistentFlags().StringVar(&url, "url", "", "the Service's URL (e.g. http://llama.default.example.com)")
	cmd.PersistentFlags().StringVar(&apiKey, "api-key", os.Getenv("OPENAI_API_KEY"), "bearer token, if the endpoint wants one")
	cmd.PersistentFlags().DurationVar(&poll, "poll", 2*time.Second, "status polling interval")
	client := func() (*batch.Client, error) {
		return batch.NewClient(batch.ClientOptions{URL: url, APIKey: apiKey, Poll: poll, Progress: os.Stderr, Bar: bench.IsTerminal(os.Stderr)})
	}

	var so batch.SubmitOptions
	submit := &cobra.Command{
		Use:   "submit FILE.jsonl",
		Short: "Upload a batch file, follow the batch and write its results (rerun to resume)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			so.Input = args[0]
			b, err := c.Submit(ctx, so)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("interrupted: the batch goes on; rerun the same command to follow it and get its results")
				}
				return err
			}
			fmt.Println(b.ID, b.Status)
			return nil
		},
	}
	submit.Flags().StringVarP(&so.Output, "output", "o", "", "output JSONL (default FILE.output.jsonl; errors in FILE.output.errors.jsonl)")
	submit.Flags().StringVar(&so.Endpoint, "endpoint", "", "/v1/chat/completions or /v1/completions (default: the first line's url)")
	submit.Flags().StringVar(&so.CompletionWindow, "completion-window", "24h", "how long the batch may take")
	submit.Flags().BoolVar(&so.Detach, "detach", false, "return once the batch is created")

	status := &cobra.Command{
		Use:   "status BATCH_ID",
		Short: "Show a batch's status",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			b, err := c.Status(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Println(batch.Progress(b, false))
			return nil
		},
	}
	var out string
	results := &cobra.Command{
		Use:   "results BATCH_ID",
		Short: "Wait for a batch to end and write its output (and error) file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			b, err := c.Follow(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if out == "" {
				out = b.ID + ".output.jsonl"
			}
			return c.Results(cmd.Context(), b, out)
		},
	}
	results.Flags().StringVarP(&out, "output", "o", "", "output JSONL (default BATCH_ID.output.jsonl)")
	cancel := &cobra.Command{
		Use:   "cancel BATCH_ID",
		Short: "Cancel a batch (finished lines are kept in its output)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			b, err := c.Cancel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Println(batch.Progress(b, false))
			return nil
		},
	}
	cmd.AddCommand(submit, status, results, cancel)
	return cmd
}
