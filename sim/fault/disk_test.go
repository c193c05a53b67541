package fault_test

import (
	"testing"

	"github.com/ferrydr/ferry/internal/blockdevtest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/sim/fault"
)

// TestDiskContract: the fault harness's disk, with no fault set, is a
// Device like any other.
func TestDiskContract(t *testing.T) {
	blockdevtest.Run(t, blockdevtest.Options{}, func(t *testing.T) blockdev.Device { return fault.NewDisk(blockdevtest.Size) })
}
