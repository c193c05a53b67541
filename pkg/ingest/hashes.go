package ingest

import (
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// BlockHashes streams the chunk hashes of one disk's replica so that an
// agent can resync by sending only the chunks that differ.
func (r *Receiver) BlockHashes(req *ferryv1.BlockHashesRequest, stream ferryv1.Replication_BlockHashesServer) error {
	ctx := stream.Context()
	name := journal.VMID(req.GetVm())
	if r.cfg.Authorize != nil {
		if err := r.cfg.Authorize(ctx, name); err != nil {
			return grpcStatus(fmt.Errorf("%w: vm %s: %v", ErrDenied, name, err))
		}
	}
	vm, err := r.j.VM(ctx, name)
	if errors.Is(err, journal.ErrNoVM) {
		return grpcStatus(fmt.Errorf("%w: vm %s is not replicated here", ErrBadHello, name))
	}
	if err != nil {
		return grpcStatus(err)
	}
	if journal.Epoch(req.GetEpoch()) != vm.Epoch {
		return grpcStatus(fmt.Errorf("%w: vm %s: asked at epoch %d, replica is at epoch %d", ErrEpoch, name, req.GetEpoch(), vm.Epoch))
	}
	disk, err := vm.DiskIndex(journal.DiskID(req.GetDisk()))
	if err != nil {
		return grpcStatus(fmt.Errorf("%w: %v", ErrBadHello, err))
	}
	chunk := int64(req.GetChunkSize())
	if chunk == 0 || chunk%blockdev.BlockSize != 0 || chunk > 16<<20 {
		return grpcStatus(fmt.Errorf("%w: chunk size %d is not a multiple of %d up to 16 MiB", ErrBadHello, chunk, blockdev.BlockSize))
	}
	var only []uint64
	if len(req.GetChunks()) > 0 {
		only = req.GetChunks()
	}
	sums, seq, err := r.j.ChunkHashes(ctx, name, disk, chunk, only)
	if err != nil {
		return grpcStatus(err)
	}
	const per = 32 << 10
	for i := 0; i < len(sums); i += per {
		msg := &ferryv1.BlockHashesResponse{FirstChunk: uint64(i), Hashes: sums[i:min(i+per, len(sums))], Seq: uint64(seq)}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}
