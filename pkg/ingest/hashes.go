package ingest

import (
	"errors"
	"fmt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// BlockHashes streams the chunk hashes of one disk's replica so that an
// agent can resync by sending only the chunks that differ.
func (r *Receiver) BlockHashes(req *ferryv1.BlockHashesRequest, stream ferryv1.Replication_BlockHashesServer) error {
	ctx := stream.Context()
	name := ferry.VMID(req.GetVm())
	if r.cfg.Authorize != nil {
		if err := r.cfg.Authorize(ctx, name); err != nil {
			return grpcStatus(fmt.Errorf("%w: vm %s: %w", ErrDenied, name, err))
		}
	}
	vm, err := r.j.VM(ctx, name)
	if errors.Is(err, journal.ErrNoVM) {
		return grpcStatus(fmt.Errorf("%w: vm %s is not replicated here", ErrBadHello, name))
	}
	if err != nil {
		return grpcStatus(err)
	}
	if ferry.Epoch(req.GetEpoch()) != vm.Epoch {
		return grpcStatus(fmt.Errorf("%w: vm %s: asked at epoch %d, replica is at epoch %d", ErrEpoch, name, req.GetEpoch(), vm.Epoch))
	}
	disk, err := vm.DiskIndex(ferry.DiskID(req.GetDisk()))
	if err != nil {
		return grpcStatus(fmt.Errorf("%w: %w", ErrBadHello, err))
	}
	chunk := int64(req.GetChunkSize())
	if chunk == 0 || chunk%blockdev.BlockSize != 0 || chunk > 16<<20 {
		return grpcStatus(fmt.Errorf("%w: chunk size %d is not a multiple of %d up to 16 MiB", ErrBadHello, chunk, blockdev.BlockSize))
	}
	var only []uint64
	if len(req.GetChunks()) > 0 {
		only = req.GetChunks()
	}
	// Hashes go out as they are computed, 32Ki to a message: memory
	// follows a window of the disk, not its declared size. Only the answer
	// to a list of chunks is held whole, and that list came in one message.
	const per = 32 << 10
	var pending []uint64
	var first uint64
	var seq ferry.Seq
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := stream.Send(&ferryv1.BlockHashesResponse{FirstChunk: first, Hashes: pending, Seq: uint64(seq)})
		first += uint64(len(pending))
		pending = pending[:0]
		return err
	}
	each := func(s ferry.Seq, _ int64, sums []uint64) error {
		seq = s
		for len(sums) > 0 {
			n := min(per-len(pending), len(sums))
			pending = append(pending, sums[:n]...)
			sums = sums[n:]
			if len(pending) == per {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if req.GetFoldBlockHashes() {
		// Folded hashes come from the hash index, in disk order; a list
		// of chunks is answered from the whole disk's.
		if only == nil {
			_, err = r.j.EachFoldedHash(ctx, name, disk, chunk, each)
		} else {
			var all []uint64
			var s ferry.Seq
			if s, err = r.j.EachFoldedHash(ctx, name, disk, chunk, func(_ ferry.Seq, _ int64, sums []uint64) error {
				all = append(all, sums...)
				return nil
			}); err == nil {
				picked := make([]uint64, len(only))
				for i, c := range only {
					if c >= uint64(len(all)) {
						return grpcStatus(fmt.Errorf("%w: chunk %d of a disk of %d chunks", ErrBadHello, c, len(all)))
					}
					picked[i] = all[c]
				}
				err = each(s, 0, picked)
			}
		}
	} else {
		_, err = r.j.EachChunkHash(ctx, name, disk, chunk, only, each)
	}
	if err == nil {
		err = flush()
	}
	if err != nil {
		return grpcStatus(err)
	}
	return nil
}
