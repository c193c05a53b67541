package agent

import (
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
)

// NBDExports returns the agent's disks as NBD exports named after the
// disks. Writes go through the write splitter, in the order the client
// sends them, so the stream is write-ordered and crash-consistent points
// are valid; FLUSH and FUA reach the disk before they are answered.
func (a *Agent) NBDExports() []nbd.Export {
	out := make([]nbd.Export, len(a.cfg.Disks))
	for i, d := range a.cfg.Disks {
		out[i] = nbd.Export{Name: d.Name, Device: a.Disk(i), BlockSize: blockdev.BlockSize}
	}
	return out
}
