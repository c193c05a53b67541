package sim

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// The application's place on the first disk, after the boot block; the
// VM's other writes stay clear of reservedArea.
const (
	appOff       = 64 << 10
	appBlocks    = 255 // data blocks after the superblock
	reservedArea = appOff + (appBlocks+1)*blockdev.BlockSize
	appMagic     = "FERRYAPP"
)

// App is a simulated application whose invariant holds only when it has
// been quiesced: a store that writes its data blocks as it goes and its
// superblock (the checksum of its data) only when it flushes. A
// crash-consistent point taken after data changed since the last flush
// fails the check; an app-consistent point, cut right after a flush while
// the application is frozen, never does.
type App struct {
	rng *rand.Rand
}

func newApp(seed uint64) *App { return &App{rng: rand.New(rand.NewPCG(seed, 0xa99))} }

// work writes n random data blocks.
func (a *App) work(ctx context.Context, dev blockdev.Device, n int) error {
	buf := make([]byte, blockdev.BlockSize)
	for i := 0; i < n; i++ {
		for k := 0; k < len(buf); k += 8 {
			binary.LittleEndian.PutUint64(buf[k:], a.rng.Uint64())
		}
		b := 1 + a.rng.IntN(appBlocks)
		if _, err := dev.WriteAt(ctx, buf, appOff+int64(b)*blockdev.BlockSize); err != nil {
			return err
		}
	}
	return nil
}

// flush writes the superblock: the checksum of the data as it is now.
func (a *App) flush(ctx context.Context, dev blockdev.Device) error {
	data := make([]byte, appBlocks*blockdev.BlockSize)
	if _, err := dev.ReadAt(ctx, data, appOff+blockdev.BlockSize); err != nil {
		return err
	}
	sb := make([]byte, blockdev.BlockSize)
	copy(sb, appMagic)
	binary.LittleEndian.PutUint64(sb[8:], xxhash.Sum64(data))
	_, err := dev.WriteAt(ctx, sb, appOff)
	return err
}

// CheckApp checks the application's invariant on an image of the first
// disk: the superblock's checksum matches the data.
func CheckApp(ctx context.Context, disk blockdev.Device) error {
	sb := make([]byte, blockdev.BlockSize)
	data := make([]byte, appBlocks*blockdev.BlockSize)
	if _, err := disk.ReadAt(ctx, sb, appOff); err != nil {
		return err
	}
	if _, err := disk.ReadAt(ctx, data, appOff+blockdev.BlockSize); err != nil {
		return err
	}
	if string(sb[:8]) != appMagic {
		return fmt.Errorf("application superblock missing")
	}
	if want, got := binary.LittleEndian.Uint64(sb[8:]), xxhash.Sum64(data); want != got {
		return fmt.Errorf("application data changed after its last flush (superblock says %016x, data hashes to %016x)", want, got)
	}
	return nil
}
