package journal

import (
	"context"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/retention"
)

// ThinAppPoints applies retention.Thin to vm's points. It returns how many
// points it demoted.
func (j *Journal) ThinAppPoints(ctx context.Context, vm ferry.VMID, p retention.Policy) (int, error) {
	pts, err := j.Points(ctx, vm)
	if err != nil {
		return 0, err
	}
	demote := retention.Thin(pts, p)
	if len(demote) == 0 {
		return 0, nil
	}
	return len(demote), j.SetConsistency(ctx, vm, demote, ferry.Crash)
}

// Retain applies retention.Expire to vm's points: it deletes the points older
// than p's window and folds the records before the oldest kept point into
// base (one device per disk: the process server's base images, the master
// target's primary or alternate disks), so that the journal stays bounded
// under steady churn. Zero stats: nothing was old enough.
func (j *Journal) Retain(ctx context.Context, vm ferry.VMID, p retention.Policy, now time.Time, base func() ([]blockdev.Device, error)) (TrimStats, error) {
	st, err := j.VM(ctx, vm)
	if err != nil {
		return TrimStats{}, err
	}
	pts, err := j.Points(ctx, vm)
	if err != nil {
		return TrimStats{}, err
	}
	upTo := retention.Expire(pts, p, now)
	// Points exist only where records were processed and not folded yet;
	// a journal whose state says otherwise is not trimmed.
	if upTo == 0 || upTo <= st.BaseSeq || upTo > st.ProcessedSeq {
		return TrimStats{}, nil
	}
	devs, err := base()
	if err != nil {
		return TrimStats{}, err
	}
	return j.Trim(ctx, vm, upTo, devs)
}
