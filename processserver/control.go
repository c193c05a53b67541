package processserver

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
)

// State is a VM's protection state as the process server sees it.
type State string

const (
	// StateEnabling: registered, the initial replication has not produced a
	// recovery point yet.
	StateEnabling State = "enabling"
	// StateProtected: replicating, with recovery points.
	StateProtected State = "protected"
	// StateFailedOver: failed over, not committed; the point may change.
	StateFailedOver State = "failed-over"
	// StateCommitted: failover committed; the VM runs at the recovery site
	// and is not protected until it is reprotected.
	StateCommitted State = "committed"
	// StateReprotected: the recovered VM replicates back to the master
	// target at the primary site.
	StateReprotected State = "reprotected"
	// StateFailedBack: failed back to the primary site, not committed.
	StateFailedBack State = "failed-back"
	// StateFailbackCommitted: failback committed; the primary VM runs and
	// is not protected until it is reprotected again.
	StateFailbackCommitted State = "failback-committed"
)

// Actions an operator can ask for.
const (
	ActionTestFailover      = "test-failover"
	ActionCleanupTest       = "cleanup-test"
	ActionPlannedFailover   = "planned-failover"
	ActionUnplannedFailover = "unplanned-failover"
	ActionChangePoint       = "change-point"
	ActionCommit            = "commit"
	ActionReprotect         = "reprotect"
	ActionFailback          = "failback"
)

// VMState is the control state of one VM, kept in control.db.
type VMState struct {
	Name     string          `json:"name"`
	State    State           `json:"state"`
	Machine  Machine         `json:"machine"`
	Test     *TestFailover   `json:"test,omitempty"`
	Failover *ActiveFailover `json:"failover,omitempty"`
	// Location of reverse replication: original or alternate.
	Location string `json:"location,omitempty"`
	// Policy is the replication policy attached by an operator; empty:
	// the default for the machine's kind.
	Policy string `json:"policy,omitempty"`
	// Agent is the agent instance the VM replicates from.
	Agent *AgentBinding `json:"agent,omitempty"`
	// AgentConflict describes the last agent refused for it.
	AgentConflict string `json:"agentConflict,omitempty"`
	// DiskConflict says which protected disk changed size.
	DiskConflict string `json:"diskConflict,omitempty"`
	// Intent is an operation under way, recorded before it changes the
	// compute layer or the journal, so that a restart finishes or undoes it.
	Intent *Intent `json:"intent,omitempty"`
}

// Intent kinds.
const (
	IntentFailover = "failover"
	IntentCommit   = "commit"
)

// Intent is an operation that spans the compute layer and two databases.
type Intent struct {
	Op  string `json:"op"`
	Job uint64 `json:"job"`
	// Slot of the VM's disks, the name the compute layer is asked to create
	// and, once it answered, the instance it created.
	Slot     string    `json:"slot,omitempty"`
	Name     string    `json:"name,omitempty"`
	Instance string    `json:"instance,omitempty"`
	Started  time.Time `json:"started"`
}

// AgentBinding ties a VM's replication to one agent instance.
type AgentBinding struct {
	Instance string      `json:"instance"`
	Peer     string      `json:"peer,omitempty"` // certificate identity and serial, address
	Epoch    ferry.Epoch `json:"epoch"`
	Since    time.Time   `json:"since"`
}

// TestFailover is a running test failover.
type TestFailover struct {
	Instance string    `json:"instance"`
	Point    ferry.Seq `json:"point"`
	Network  string    `json:"network"`
	Started  time.Time `json:"started"`
}

// ActiveFailover is a planned or unplanned failover, before or after commit.
type ActiveFailover struct {
	Type     string    `json:"type"`
	Instance string    `json:"instance"`
	Point    ferry.Seq `json:"point"`
	// Network the VM runs on at the recovery site.
	Network string    `json:"network,omitempty"`
	Started time.Time `json:"started"`
}

// Allowed lists the actions the state allows.
func (v *VMState) Allowed() []string {
	switch v.State {
	case StateProtected:
		if v.Test != nil {
			return []string{ActionCleanupTest}
		}
		if v.Machine.VMwareStyle() {
			return []string{ActionTestFailover, ActionUnplannedFailover}
		}
		return []string{ActionTestFailover, ActionPlannedFailover, ActionUnplannedFailover}
	case StateFailedOver:
		return []string{ActionChangePoint, ActionCommit}
	case StateCommitted, StateFailbackCommitted:
		return []string{ActionReprotect}
	case StateReprotected:
		return []string{ActionFailback}
	case StateFailedBack:
		return []string{ActionCommit}
	}
	return nil
}

// StateError names the state, the refused action and what is allowed.
type StateError struct {
	VM      string
	State   State
	Test    bool
	Action  string
	Allowed []string
	// Hint says why, when the state alone does not.
	Hint string
}

func (e *StateError) Error() string {
	st := string(e.State)
	if e.Test {
		st += " with a test failover running"
	}
	allowed := "nothing until it changes state"
	if len(e.Allowed) > 0 {
		allowed = strings.Join(e.Allowed, ", ")
	}
	hint := ""
	if e.State == StateEnabling {
		hint = " (the initial replication has not produced a recovery point yet)"
	}
	if e.Hint != "" {
		hint += " (" + e.Hint + ")"
	}
	return fmt.Sprintf("vm %s is %s%s: %s is not allowed; allowed: %s", e.VM, st, hint, e.Action, allowed)
}

func (e *StateError) Unwrap() error { return ErrState }

func (v *VMState) require(action string) error {
	if slices.Contains(v.Allowed(), action) {
		return nil
	}
	e := &StateError{VM: v.Name, State: v.State, Test: v.Test != nil, Action: action, Allowed: v.Allowed()}
	if action == ActionPlannedFailover && v.State == StateProtected && v.Test == nil && v.Machine.VMwareStyle() {
		e.Hint = stepf("planned failover is offered for Hyper-V-style machines; %s is %s: fail it over unplanned (with --shutdown to shut it down first and lose nothing it wrote)",
			v.Name, v.Machine.Kind())
	}
	return e
}

var (
	bucketStates = []byte("states")
	bucketJobs   = []byte("jobs")
)

// control is the process server's own state: protection states and jobs.
type control struct {
	db *bolt.DB
}

func openControl(path string) (*control, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open control store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketStates, bucketJobs, bucketPolicies, bucketGroups, bucketPlans} {
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
	return &control{db: db}, nil
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

// putJob stores a job, giving it an ID when it has none.
func (c *control) putJob(j *Job) error {
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
