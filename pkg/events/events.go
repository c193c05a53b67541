// Package events is the event log both of Ferry's servers keep in their
// bbolt control files: what happened to a VM that operators must see
// (RPO alerts, refused agents, failed multi-VM points), oldest first.
package events

import (
	"encoding/binary"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Kinds both servers raise.
const (
	RPOExceeded  = "rpo-exceeded"
	RPORecovered = "rpo-recovered"
)

// Event is something that happened to a VM.
type Event struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
}

var bucket = []byte("events")

// Add appends e to db's log.
func Add(db *bolt.DB, e Event) error {
	buf, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		id, _ := b.NextSequence()
		return b.Put(binary.BigEndian.AppendUint64(nil, id), buf)
	})
}

// List returns the events of vm (all VMs when empty), oldest first.
func List(db *bolt.DB, vm string) ([]Event, error) {
	var out []Event
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if vm == "" || e.VM == vm {
				out = append(out, e)
			}
			return nil
		})
	})
	return out, err
}
