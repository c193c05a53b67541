// Package plan is the definition of a recovery plan, as operators write it
// and every Ferry tool reads it: groups of VMs that fail over in order
// (the VMs of one group in parallel), with actions before and after each
// group. The process server runs plans; ferryctl uploads and shows them.
package plan

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
)

// Plan is a recovery plan.
type Plan struct {
	Name   string  `json:"name"`
	Groups []Group `json:"groups"`
	// UploadedBy and Uploaded are set by the server on PutPlan.
	UploadedBy string    `json:"uploadedBy,omitempty"`
	Uploaded   time.Time `json:"uploaded,omitempty"`
}

// HasCommands reports whether the plan runs commands on the server.
func (p Plan) HasCommands() bool {
	for _, g := range p.Groups {
		for _, a := range slices.Concat(g.Pre, g.Post) {
			if !a.Manual {
				return true
			}
		}
	}
	return false
}

// VMs returns every VM of the plan, group by group.
func (p Plan) VMs() []string {
	var out []string
	for _, g := range p.Groups {
		out = append(out, g.VMs...)
	}
	return out
}

// Validate reports what is wrong with the plan's definition.
func (p Plan) Validate() error {
	if !ferry.ValidDefinitionName(p.Name) {
		return fmt.Errorf("plan name %q: use 1-63 letters, digits, '.', '_' or '-'", p.Name)
	}
	if len(p.Groups) == 0 {
		return fmt.Errorf("plan %s has no group", p.Name)
	}
	seen := map[string]int{}
	for i, g := range p.Groups {
		if len(g.VMs) == 0 {
			return fmt.Errorf("plan %s: group %d has no VM", p.Name, i+1)
		}
		for _, vm := range g.VMs {
			if at, ok := seen[vm]; ok {
				return fmt.Errorf("plan %s: vm %s is in group %d and group %d", p.Name, vm, at, i+1)
			}
			seen[vm] = i + 1
		}
		if g.FailbackSync != "" && !g.FailbackSync.Valid() {
			return fmt.Errorf("plan %s: group %d: failback_sync %q: want before or during", p.Name, i+1, g.FailbackSync)
		}
		for _, a := range slices.Concat(g.Pre, g.Post) {
			switch {
			case strings.TrimSpace(a.Name) == "":
				return fmt.Errorf("plan %s: group %d has an action without a name", p.Name, i+1)
			case ferry.CheckTag(a.Name) != nil:
				return fmt.Errorf("plan %s: action name %q: at most 256 printable characters", p.Name, a.Name)
			case a.Manual && a.Command != "":
				return fmt.Errorf("plan %s: action %q is manual and has a command; choose one", p.Name, a.Name)
			case !a.Manual && strings.TrimSpace(a.Command) == "":
				return fmt.Errorf("plan %s: action %q has no command (or mark it manual)", p.Name, a.Name)
			}
		}
	}
	return nil
}

// Group is one stage of a plan.
type Group struct {
	VMs  []string `json:"vms"`
	Pre  []Action `json:"pre,omitempty"`
	Post []Action `json:"post,omitempty"`
	// FailbackSync is how the group synchronizes at failback when the run
	// does not say: before (default) or during.
	FailbackSync ferry.SyncMode `json:"failback_sync,omitempty"`
}

// Action is a command run by the process server, or a manual step the
// plan waits on until an operator resumes it.
type Action struct {
	Name    string `json:"name"`
	Command string `json:"command,omitempty"`
	Manual  bool   `json:"manual,omitempty"`
}
