package processserver

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/pkg/ingest"
)

// TestJudgeHealth: each rule of replication health, and which wins when
// several hold. Each case names what it pins; removing a rule's line fails
// its case.
func TestJudgeHealth(t *testing.T) {
	now := time.Unix(10_000, 0)
	const hb = time.Second
	up := ingest.Link{Connected: true, Since: now.Add(-time.Hour), LastSeen: now.Add(-100 * time.Millisecond), Heartbeat: hb}
	protected := VMState{State: StateProtected}
	cases := []struct {
		name       string
		h          VMHealth
		consistent bool
		st         VMState
		health     Health
		reason     string
	}{
		{"replicating", VMHealth{Link: up, Threshold: 15 * time.Minute, RPO: time.Minute}, true, protected, HealthHealthy, "replicating"},
		{"derived state empty counts as enabling", VMHealth{Link: up}, true, VMState{}, HealthHealthy, "replicating"},
		{"failed over: none", VMHealth{}, true, VMState{State: StateFailedOver}, HealthNone, "failed-over: this site receives no replication"},
		{"committed: none", VMHealth{}, true, VMState{State: StateCommitted}, HealthNone, "committed"},
		{"never connected", VMHealth{}, true, protected, HealthCritical, "agent not connected since the process server started"},
		{"disconnected a moment ago: reconnecting", VMHealth{Link: ingest.Link{LastSeen: now.Add(-time.Second), Left: now.Add(-500 * time.Millisecond), Heartbeat: hb}}, true, protected, HealthHealthy, "agent reconnecting"},
		{"disconnected past the grace", VMHealth{Link: ingest.Link{LastSeen: now.Add(-3 * time.Second), Left: now.Add(-1500 * time.Millisecond), Heartbeat: hb}}, true, protected, HealthCritical, "agent disconnected; last heard from 3s ago"},
		{"grace is the server's heartbeat when the agent named none", VMHealth{Link: ingest.Link{LastSeen: now.Add(-3 * time.Second), Left: now.Add(-1500 * time.Millisecond)}}, true, protected, HealthHealthy, "agent reconnecting"},
		{"silent for 3 heartbeats", VMHealth{Link: ingest.Link{Connected: true, LastSeen: now.Add(-3100 * time.Millisecond), Heartbeat: hb}}, true, protected, HealthCritical, "agent silent for 3.1s (3 heartbeats of 1s missed)"},
		{"silent for exactly 3 heartbeats is not yet", VMHealth{Link: ingest.Link{Connected: true, LastSeen: now.Add(-3 * time.Second), Heartbeat: hb}}, true, protected, HealthHealthy, "replicating"},
		{"silent but busy: the server owes the acknowledgement", VMHealth{Link: ingest.Link{Connected: true, Busy: true, LastSeen: now.Add(-time.Minute), Heartbeat: hb}}, true, protected, HealthHealthy, "replicating"},
		{"RPO above the threshold", VMHealth{Link: up, Threshold: time.Minute, RPO: 90 * time.Second}, true, protected, HealthWarning, "RPO 1m30s is above the threshold 1m0s"},
		{"RPO at the threshold is not above", VMHealth{Link: up, Threshold: time.Minute, RPO: time.Minute}, true, protected, HealthHealthy, "replicating"},
		{"RPO above twice the threshold", VMHealth{Link: up, Threshold: time.Minute, RPO: 121 * time.Second}, true, protected, HealthCritical, "RPO 2m1s is above twice the threshold 1m0s"},
		{"RPO at twice the threshold is a warning", VMHealth{Link: up, Threshold: time.Minute, RPO: 2 * time.Minute}, true, protected, HealthWarning, "above the threshold"},
		{"no threshold, no RPO finding", VMHealth{Link: up, RPO: time.Hour}, true, protected, HealthHealthy, "replicating"},
		{"disk resized", VMHealth{Link: up}, true, VMState{State: StateProtected, DiskConflict: "disk os: 1 GiB, was 2 GiB"}, HealthCritical, "replication stopped: disk os: 1 GiB, was 2 GiB"},
		{"agent conflict", VMHealth{Link: up}, true, VMState{State: StateProtected, AgentConflict: "instance b was refused"}, HealthWarning, "instance b was refused"},
		{"resync without progress", VMHealth{Link: up}, false, protected, HealthWarning, "resync under way"},
		{"initial replication with progress", VMHealth{Link: up, Copies: true, Copy: ingest.Copy{Progress: 0.415, Left: 72 * time.Second}}, false, VMState{State: StateEnabling}, HealthHealthy, "initial replication 42%, 1m12s left"},
		{"resync with progress", VMHealth{Link: up, Copies: true, Copy: ingest.Copy{Progress: 0.5}}, false, protected, HealthHealthy, "resync 50%"},
		{"critical wins over an earlier warning", VMHealth{Link: ingest.Link{Connected: true, LastSeen: now.Add(-10 * time.Second), Heartbeat: hb}, Threshold: time.Minute, RPO: 90 * time.Second}, true, VMState{State: StateProtected, AgentConflict: "x"}, HealthCritical, "agent silent for 10s (10 heartbeats of 1s missed); RPO 1m30s is above the threshold 1m0s (+1 more)"},
		{"a warning found first does not hide a critical one, nor lead the reason", VMHealth{Link: up, Threshold: time.Minute, RPO: 3 * time.Minute}, true, VMState{State: StateProtected, AgentConflict: "x"}, HealthCritical, "RPO 3m0s is above twice the threshold 1m0s; x"},
		{"a warning after a note leads", VMHealth{Link: ingest.Link{LastSeen: now.Add(-time.Second), Left: now.Add(-500 * time.Millisecond), Heartbeat: hb}, Threshold: time.Minute, RPO: 90 * time.Second}, true, protected, HealthWarning, "RPO 1m30s is above the threshold 1m0s; agent reconnecting"},
		{"a critical after a note leads", VMHealth{Link: ingest.Link{LastSeen: now.Add(-time.Second), Left: now.Add(-500 * time.Millisecond), Heartbeat: hb}, Threshold: time.Minute, RPO: 3 * time.Minute}, true, protected, HealthCritical, "RPO 3m0s is above twice the threshold 1m0s; agent reconnecting"},
		{"information follows warnings", VMHealth{Link: up, Threshold: time.Minute, RPO: 90 * time.Second, Copies: true, Copy: ingest.Copy{Progress: 0.5}}, false, protected, HealthWarning, "RPO 1m30s is above the threshold 1m0s; resync 50%"},
		{"a warning does not lower critical", VMHealth{Link: up, Threshold: time.Minute, RPO: 3 * time.Minute}, false, VMState{State: StateProtected, AgentConflict: "x"}, HealthCritical, "RPO 3m0s is above twice the threshold 1m0s; x (+1 more)"},
	}
	for _, c := range cases {
		h := c.h
		judge(&h, c.consistent, c.st, 5*time.Second, now)
		if h.Health != c.health || !strings.Contains(h.Reason, c.reason) {
			t.Errorf("%s: %s %q, want %s %q", c.name, h.Health, h.Reason, c.health, c.reason)
		}
	}
}
