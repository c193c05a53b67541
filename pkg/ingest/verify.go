package ingest

import (
	"fmt"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// VerifyBatch checks what a relay can check of a batch without the
// stream's state: every record's check and every write's data against its
// xxhash (zero writes against the sum of zeros). The error (ErrTransit or
// ErrChecksum) ends the agent's stream with DATA_LOSS, and the agent sends
// the batch again.
func VerifyBatch(vm string, b *ferryv1.Batch) error {
	for _, rec := range b.GetRecords() {
		if c := rec.GetCheck(); c == 0 || c != wire.RecordCheck(rec) {
			return grpcStatus(&RecordError{VM: vm, Seq: rec.GetSeq(), Err: ErrTransit, Msg: fmt.Sprintf("record %d fails its check: damaged in transit", rec.GetSeq())})
		}
		w := rec.GetWrite()
		if w == nil {
			continue
		}
		want := w.GetXxhash()
		var got uint64
		if w.GetZero() {
			got = zeroSum(int(w.GetLength()))
		} else {
			got = xxhash.Sum64(w.GetData())
		}
		if got != want {
			return grpcStatus(&RecordError{VM: vm, Seq: rec.GetSeq(), Err: ErrChecksum,
				Msg: fmt.Sprintf("disk %d offset %d: data hashes to %016x, record says %016x", w.GetDisk(), w.GetOffset(), got, want)})
		}
	}
	return nil
}
