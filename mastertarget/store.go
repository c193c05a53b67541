package mastertarget

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry/pkg/events"
)

// The targets store (targets.db) is the master target's own state: the
// VMs registered for reverse replication, the multi-VM point sequence of
// each group, and the event log. Every access to it is in this file.

var (
	bucketTargets  = []byte("targets")
	bucketGroupSeq = []byte("group-seq")
)

type store struct {
	db *bolt.DB
}

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open targets store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTargets, bucketGroupSeq} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (st *store) close() error { return st.db.Close() }

// target returns vm's registration, or nil.
func (st *store) target(vm string) (*target, error) {
	var t *target
	err := st.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketTargets).Get([]byte(vm)); v != nil {
			t = new(target)
			return json.Unmarshal(v, t)
		}
		return nil
	})
	return t, err
}

func (st *store) putTarget(t *target) error {
	buf, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return st.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketTargets).Put([]byte(t.VM), buf) })
}

// active returns the VMs replicating here now (not retired).
func (st *store) active() ([]target, error) {
	var ts []target
	err := st.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTargets).ForEach(func(k, v []byte) error {
			var t target
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("target %s: %w", k, err)
			}
			if !t.Retired {
				ts = append(ts, t)
			}
			return nil
		})
	})
	return ts, err
}

// nextGroupPoint numbers group's next multi-VM point.
func (st *store) nextGroupPoint(group string) (uint64, error) {
	var n uint64
	err := st.db.Update(func(tx *bolt.Tx) error {
		g, err := tx.Bucket(bucketGroupSeq).CreateBucketIfNotExists([]byte(group))
		if err != nil {
			return err
		}
		n, err = g.NextSequence()
		return err
	})
	return n, err
}

func (st *store) addEvent(e Event) error { return events.Add(st.db, e) }

func (st *store) events(vm string) ([]Event, error) { return events.List(st.db, vm) }
