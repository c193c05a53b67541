package processserver

import (
	"testing"

	"github.com/ferrydr/ferry/internal/blockdevtest"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestQuotaDeviceContract: the scratch quota's wrapper is a Device (with a
// quota large enough not to matter here).
func TestQuotaDeviceContract(t *testing.T) {
	q := newScratchQuota(1 << 30)
	blockdevtest.Run(t, blockdevtest.Options{}, func(t *testing.T) blockdev.Device {
		return q.wrap(t.Name(), blockdev.NewMemory(blockdevtest.Size))
	})
}
