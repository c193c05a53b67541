package client

import (
	"context"
	"time"

	"github.com/ferrydr/ferry"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// FollowEvery is how often FollowJob asks; a job's steps take far longer.
const FollowEvery = 200 * time.Millisecond

// FollowJob asks for job id every interval (FollowEvery when 0) until it
// has ended or waits for an operator (a plan's manual step), and returns
// it. step, when set, is called once for each step as it ends, in order.
func FollowJob(ctx context.Context, rc ferryv1.RecoveryClient, id uint64, interval time.Duration, step func(*ferryv1.JobStep)) (*ferryv1.Job, error) {
	if interval <= 0 {
		interval = FollowEvery
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	shown := 0
	for {
		j, err := rc.GetJob(ctx, &ferryv1.GetJobRequest{Id: id})
		if err != nil {
			return nil, err
		}
		if step != nil {
			for _, s := range j.GetSteps()[shown:] {
				step(s)
			}
			shown = len(j.GetSteps())
		}
		if ferry.Outcome(j.GetOutcome()) != ferry.OutcomeRunning || j.GetWaiting() != "" {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C:
		}
	}
}
