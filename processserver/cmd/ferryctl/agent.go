package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func agentCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{Use: "agent", Short: "the agent instance a VM replicates from"})
	release := command("release --vm NAME", "let another agent instance replicate the VM (a moved machine)")
	vm := vmFlag(release.Flags())
	release.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if err := need("vm", vm); err != nil {
			return err
		}
		resp, err := ps.rc.ReleaseAgent(ctx, &ferryv1.VMRequest{Vm: *vm})
		if err != nil {
			return err
		}
		fmt.Printf("vm %s released from agent instance %s: the next agent to connect takes it\n", *vm, resp.GetReleased())
		return nil
	})
	c.AddCommand(release)
	return c
}
