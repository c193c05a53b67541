package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/pkg/cbt"
)

// state is what the agent keeps in StateDir between runs.
type state struct {
	VM    string   `json:"vm"`
	Disks []string `json:"disks"`
	Sizes []int64  `json:"sizes"`
	// Clean is true only after a shutdown that saved every unsent change in
	// the bitmaps. Anything else (a crash) needs a resync by hash.
	Clean bool `json:"clean"`
	// Acked is the receiver's durable sequence at a clean shutdown.
	Acked uint64 `json:"acked"`
	// Instance identifies this agent to the receiver, which replicates a
	// VM from one instance only.
	Instance string `json:"instance,omitempty"`
}

func (a *Agent) statePath() string { return filepath.Join(a.cfg.StateDir, "state.json") }

func (a *Agent) bitmapPath(disk int) string {
	return filepath.Join(a.cfg.StateDir, "bitmap-"+a.cfg.Disks[disk].Name)
}

// hashPath is where a disk's scan table is saved. Its chunk hashes are
// folded block sums; a table saved by an agent that hashed chunk bytes
// (file "hashes-DISK") is not read, and the agent resyncs by hash instead
// of taking every chunk for changed.
func (a *Agent) hashPath(disk int) string {
	return filepath.Join(a.cfg.StateDir, "folded-hashes-"+a.cfg.Disks[disk].Name)
}

func (a *Agent) loadState() (state, bool, error) {
	raw, err := os.ReadFile(a.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, err
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil {
		return state{}, false, fmt.Errorf("state %s: %w", a.statePath(), err)
	}
	if st.VM != a.cfg.VM || len(st.Disks) != len(a.cfg.Disks) {
		return state{}, false, fmt.Errorf("state %s belongs to vm %q with %d disks, not %q with %d: use another --state directory", a.statePath(), st.VM, len(st.Disks), a.cfg.VM, len(a.cfg.Disks))
	}
	for i, d := range a.cfg.Disks {
		if st.Disks[i] != d.Name || st.Sizes[i] != d.Device.Size() {
			return state{}, false, fmt.Errorf("state %s: disk %d was %s of %d bytes, now %s of %d: use another --state directory", a.statePath(), i, st.Disks[i], st.Sizes[i], d.Name, d.Device.Size())
		}
	}
	return st, true, nil
}

func (a *Agent) saveState(clean bool) error {
	a.mu.Lock()
	st := state{VM: a.cfg.VM, Clean: clean, Acked: a.acked, Instance: a.instance}
	a.mu.Unlock()
	for _, d := range a.cfg.Disks {
		st.Disks = append(st.Disks, d.Name)
		st.Sizes = append(st.Sizes, d.Device.Size())
	}
	raw, _ := json.MarshalIndent(st, "", "  ")
	return cbt.WriteFileAtomic(a.statePath(), raw)
}

// saveHashes persists a scan table: the chunk hashes last sent.
func saveHashes(path string, sums []uint64) error {
	buf := make([]byte, 0, len(sums)*8+8)
	for _, s := range sums {
		buf = binary.BigEndian.AppendUint64(buf, s)
	}
	buf = binary.BigEndian.AppendUint64(buf, xxhash.Sum64(buf))
	return cbt.WriteFileAtomic(path, buf)
}

func loadHashes(path string, n int) ([]uint64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw) != n*8+8 || xxhash.Sum64(raw[:n*8]) != binary.BigEndian.Uint64(raw[n*8:]) {
		return nil, fmt.Errorf("scan table %s is corrupt or for another disk size", path)
	}
	sums := make([]uint64, n)
	for i := range sums {
		sums[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	return sums, nil
}
