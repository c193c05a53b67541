package processserver

import (
	"fmt"
	"slices"
	"strings"
	"time"

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
	// LastTest is the last test failover that succeeded.
	LastTest *LastTest `json:"lastTest,omitempty"`
	// Intent is an operation under way, recorded before it changes the
	// compute layer or the journal, so that a restart finishes or undoes it.
	Intent *Intent `json:"intent,omitempty"`
}

// LastTest is a test failover that succeeded: its job and when it ended.
type LastTest struct {
	Job uint64    `json:"job"`
	At  time.Time `json:"at"`
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
