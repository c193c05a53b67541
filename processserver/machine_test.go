package processserver

import (
	"testing"
)

// TestUnknownIsNotAFinding: what the agent could not tell (the OS of a
// machine it runs beside, whether DHCP is on) is neither a failed check nor
// a reason for failover processing.
func TestUnknownIsNotAFinding(t *testing.T) {
	inst := Instance{ID: "x", PublicIP: "20.0.0.1", AllowedPorts: []int{22}}
	var unknown int
	for _, f := range Readiness(Machine{}, inst, "booted\n") {
		switch {
		case f.Unknown:
			unknown++
		case !f.OK:
			t.Errorf("an undescribed machine failed %q: %s", f.Check, f.Detail)
		}
	}
	if unknown != 1 {
		t.Errorf("%d unknown findings, want 1 (the connection settings)", unknown)
	}
	if r := FailoverProcessingReasons(Machine{OS: "linux"}); len(r) != 0 {
		t.Errorf("unknown DHCP asked for failover processing: %v", r)
	}
	off := false
	if r := FailoverProcessingReasons(Machine{OS: "linux", DHCP: &off}); len(r) != 1 {
		t.Errorf("DHCP off: reasons %v, want one", r)
	}
	// A machine that reported Linux with sshd off is a finding.
	bad := 0
	for _, f := range Readiness(Machine{OS: "linux"}, inst, "booted\n") {
		if !f.OK && !f.Unknown {
			bad++
		}
	}
	if bad != 2 {
		t.Errorf("linux without sshd settings: %d findings, want 2", bad)
	}
}
