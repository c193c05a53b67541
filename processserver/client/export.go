package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc"

	"github.com/ferrydr/ferry/pkg/blockdev"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// ExportResult says what ExportDisk wrote.
type ExportResult struct {
	PointID  uint64
	DiskSize int64
	Bytes    int64 // non-zero bytes written
}

// ExportDisk streams one disk of a recovery point from a process server into
// the device that open returns for the disk's size (a new sparse file, so
// that ranges of zeros need not be written). Every chunk's xxhash is checked
// before it is written.
func ExportDisk(ctx context.Context, cc grpc.ClientConnInterface, vm, point, disk string, open func(size int64) (blockdev.Device, error)) (ExportResult, error) {
	var res ExportResult
	stream, err := ferryv1.NewRecoveryClient(cc).ExportPoint(ctx, &ferryv1.ExportPointRequest{Vm: vm, Point: point, Disk: disk})
	if err != nil {
		return res, err
	}
	first, err := stream.Recv()
	if err != nil {
		return res, err
	}
	res.PointID, res.DiskSize = first.GetPointId(), int64(first.GetDiskSize())
	dst, err := open(res.DiskSize)
	if err != nil {
		return res, err
	}
	if dst.Size() != res.DiskSize {
		return res, fmt.Errorf("export: target is %d bytes, disk is %d", dst.Size(), res.DiskSize)
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, err
		}
		if got := xxhash.Sum64(msg.GetData()); got != msg.GetXxhash() {
			return res, fmt.Errorf("export: chunk at offset %d arrived corrupt (xxhash %016x, want %016x)", msg.GetOffset(), got, msg.GetXxhash())
		}
		if _, err := dst.WriteAt(ctx, msg.GetData(), int64(msg.GetOffset())); err != nil {
			return res, fmt.Errorf("export: %w", err)
		}
		res.Bytes += int64(len(msg.GetData()))
	}
	return res, dst.Sync(ctx)
}
