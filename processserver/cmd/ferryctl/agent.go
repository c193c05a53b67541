package main

import (
	"context"
	"fmt"

	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// agentCmd runs "ferryctl agent release --vm NAME": another agent
// instance may replicate the VM (a moved machine).
func agentCmd(ctx context.Context, ps server, args []string) error {
	if len(args) == 0 || args[0] != "release" {
		return fmt.Errorf("agent wants: release --vm NAME")
	}
	fs := flags("agent release")
	vm := vmFlag(fs)
	fs.Parse(args[1:])
	if *vm == "" {
		return fmt.Errorf("agent wants: release --vm NAME")
	}
	resp, err := ps.rc.ReleaseAgent(ctx, &ferryv1.VMRequest{Vm: *vm})
	if err != nil {
		return err
	}
	fmt.Printf("vm %s released from agent instance %s: the next agent to connect takes it\n", *vm, resp.GetReleased())
	return nil
}
