package processserver

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry/pkg/events"
)

// The control store (control.db) is the process server's own state:
// protection states, jobs, policies, replication groups, recovery plans,
// the audit log and the event log. Every access to it is in this file.
var (
	bucketStates   = []byte("states")
	bucketJobs     = []byte("jobs")
	bucketPolicies = []byte("policies")
	bucketGroups   = []byte("groups")
	bucketPlans    = []byte("plans")
	bucketAudit    = []byte("audit")
)

// control is the control store.
type control struct {
	db *bolt.DB
	// jobMoved is closed, and replaced, each time a job is stored.
	jobMu    sync.Mutex
	jobMoved chan struct{}
}

func openControl(path string) (*control, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open control store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketStates, bucketJobs, bucketPolicies, bucketGroups, bucketPlans, bucketAudit} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &control{db: db, jobMoved: make(chan struct{})}, nil
}

func (c *control) close() error { return c.db.Close() }

// state returns the stored state of vm, or a fresh one.
func (c *control) state(vm string) (VMState, error) {
	st := VMState{Name: vm}
	err := c.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketStates).Get([]byte(vm)); v != nil {
			return json.Unmarshal(v, &st)
		}
		return nil
	})
	return st, err
}

// update changes vm's stored state in one transaction, so that concurrent
// updaters (a hello recording the machine, a failover recording its
// outcome) each change only their own fields.
func (c *control) update(vm string, fn func(*VMState)) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStates)
		st := VMState{Name: vm}
		if v := b.Get([]byte(vm)); v != nil {
			if err := json.Unmarshal(v, &st); err != nil {
				return err
			}
		}
		fn(&st)
		buf, err := json.Marshal(st)
		if err != nil {
			return err
		}
		return b.Put([]byte(vm), buf)
	})
}

// states returns every VM's state.
func (c *control) states() ([]VMState, error) {
	var out []VMState
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStates).ForEach(func(k, v []byte) error {
			var st VMState
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("state of %s: %w", k, err)
			}
			out = append(out, st)
			return nil
		})
	})
	return out, err
}

// jobsMoved returns a channel closed when a job is next stored: a waiter
// reads what it waits for, then waits on the channel it took before.
func (c *control) jobsMoved() <-chan struct{} {
	c.jobMu.Lock()
	defer c.jobMu.Unlock()
	return c.jobMoved
}

// putJob stores a job, giving it an ID when it has none.
func (c *control) putJob(j *Job) error {
	defer func() {
		c.jobMu.Lock()
		close(c.jobMoved)
		c.jobMoved = make(chan struct{})
		c.jobMu.Unlock()
	}()
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		if j.ID == 0 {
			id, err := b.NextSequence()
			if err != nil {
				return err
			}
			j.ID = id
		}
		buf, err := json.Marshal(j)
		if err != nil {
			return err
		}
		return b.Put(binary.BigEndian.AppendUint64(nil, j.ID), buf)
	})
}

func (c *control) job(id uint64) (Job, error) {
	var j Job
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketJobs).Get(binary.BigEndian.AppendUint64(nil, id))
		if v == nil {
			return fmt.Errorf("job %d: %w", id, ErrNoJob)
		}
		return json.Unmarshal(v, &j)
	})
	return j, err
}

// jobs returns the jobs of vm (all when empty), oldest first.
func (c *control) jobs(vm string) ([]Job, error) {
	var out []Job
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			if vm == "" || j.VM == vm {
				out = append(out, j)
			}
			return nil
		})
	})
	return out, err
}

// listNamed returns every value of a bucket of named JSON documents
// (policies, groups, plans), by name.
func listNamed[T any](c *control, bucket []byte) ([]T, error) {
	var out []T
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, v []byte) error {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				return err
			}
			out = append(out, x)
			return nil
		})
	})
	return out, err
}

// getNamed returns the document name of a bucket; what names what is
// missing for the error ("policy", "replication group").
func getNamed[T any](c *control, bucket []byte, what, name string) (T, error) {
	var x T
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%w: %w: no %s named %q", ErrInvalidRequest, ErrNotFound, what, name)
		}
		return json.Unmarshal(v, &x)
	})
	return x, err
}

// putNamed stores the document name of a bucket.
func putNamed(c *control, bucket []byte, name string, x any) error {
	buf, err := json.Marshal(x)
	if err != nil {
		return err
	}
	return c.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(name), buf) })
}

// ensureNamed stores each document of docs (by name) unless one of that
// name exists and keep says to keep it.
func ensureNamed[T any](c *control, bucket []byte, docs map[string]T, keep func(name string) bool) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for name, x := range docs {
			if b.Get([]byte(name)) != nil && keep(name) {
				continue
			}
			buf, err := json.Marshal(x)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), buf); err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteNamed removes the document name of a bucket.
func (c *control) deleteNamed(bucket []byte, name string) error {
	return c.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(name)) })
}

// nextGroupPoint numbers a replication group's next multi-VM point.
func (c *control) nextGroupPoint() (uint64, error) {
	var n uint64
	err := c.db.Update(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.Bucket(bucketGroups).NextSequence()
		return err
	})
	return n, err
}

// maxAudit bounds the audit entries kept: the oldest go first.
const maxAudit = 100000

// addAudit appends an entry to the audit log.
func (c *control) addAudit(e AuditEntry) error {
	buf, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		if id > maxAudit {
			if err := b.Delete(binary.BigEndian.AppendUint64(nil, id-maxAudit)); err != nil {
				return err
			}
		}
		return b.Put(binary.BigEndian.AppendUint64(nil, id), buf)
	})
}

// auditEntries returns the newest entries, oldest first (all when limit
// <= 0).
func (c *control) auditEntries(limit int) ([]AuditEntry, error) {
	var out []AuditEntry
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketAudit).Cursor()
		for k, v := cur.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = cur.Prev() {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	for i, k := 0, len(out)-1; i < k; i, k = i+1, k-1 {
		out[i], out[k] = out[k], out[i]
	}
	return out, err
}

// addEvent appends to the event log.
func (c *control) addEvent(e Event) error { return events.Add(c.db, e) }

// events returns the events of vm (all VMs when empty), oldest first.
func (c *control) events(vm string) ([]Event, error) { return events.List(c.db, vm) }
