package journal

import (
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
)

// ProcessStats says what one Process call did.
type ProcessStats struct {
	From, To ferry.Seq // records (From, To] were processed
	Writes   int64
	Bytes    int64 // disk bytes verified
	Points   int   // recovery points created
}

// Process verifies every write received after the VM's last processed
// record, up to upTo (or the last durable record if that is sooner), and
// turns the markers among them into recovery points. A recovery point is
// offered only once the data it depends on has been read back and checked.
// Calls for one journal are serialized.
func (j *Journal) Process(ctx context.Context, name ferry.VMID, upTo ferry.Seq) (ProcessStats, error) {
	j.procMu.Lock()
	defer j.procMu.Unlock()
	var st ProcessStats
	var points []ferry.Point
	var consistent bool
	// Read and verify in a read transaction, so that ingest keeps
	// committing meanwhile.
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		st.From, st.To = vm.ProcessedSeq, min(upTo, vm.LastSeq)
		consistent = vm.ProcessedConsistent
		vs, err := verifyRecords(ctx, tx, vm, st.From, st.To, j.payloads(), func(r *Record) {
			switch r.Kind {
			case KindDrainBegin:
				consistent = false
			case KindDrainEnd:
				consistent = true
			case KindMarker:
				points = append(points, ferry.Point{VM: name, ID: r.Seq, Consistency: r.Consistency, Tag: r.Tag, Time: r.Time})
			}
		})
		st.Writes, st.Bytes = vs.Writes, vs.Bytes
		return err
	})
	if err != nil || st.To <= st.From {
		return st, err
	}
	err = j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		if vm.ProcessedSeq != st.From {
			return fmt.Errorf("vm %s: processed sequence moved from %d to %d during processing", name, st.From, vm.ProcessedSeq)
		}
		b := tx.Bucket(vmBucketName(name))
		for i := range points {
			if err := putPoint(b, vm, &points[i]); err != nil {
				return err
			}
		}
		vm.ProcessedSeq, vm.ProcessedConsistent = st.To, consistent
		vm.ProcessedBytes += uint64(st.Bytes)
		return putVM(tx, vm)
	})
	st.Points = len(points)
	return st, err
}

// ProcessAll processes every VM that received records since it was last
// processed, calling done (if set) with what each call did. It returns the
// errors of all VMs together; one VM's error does not stop the others.
func (j *Journal) ProcessAll(ctx context.Context, done func(ProcessStats)) error {
	vms, err := j.VMs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, vm := range vms {
		if vm.ProcessedSeq >= vm.LastSeq {
			continue
		}
		st, err := j.Process(ctx, vm.Name, ^ferry.Seq(0))
		if err != nil {
			errs = append(errs, err)
		}
		if done != nil {
			done(st)
		}
	}
	return errors.Join(errs...)
}
