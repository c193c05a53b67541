package journal

import (
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// Snapshot writes a consistent copy of the whole journal file to w, as of
// one read transaction: appends and processing go on meanwhile. Opened
// with Open (and the same key), the copy holds every VM, record, point
// and base the journal held at that moment. It returns the bytes written.
func (j *Journal) Snapshot(w io.Writer) (int64, error) {
	var n int64
	err := j.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("snapshot journal %s: %w", j.path, err)
	}
	return n, nil
}
