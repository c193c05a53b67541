package processserver

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
)

// DefaultHeartbeat is how often an agent that names no interval is taken
// to send a heartbeat when idle (the agent's default too).
const DefaultHeartbeat = 5 * time.Second

// HeartbeatsMissed is how many heartbeats an agent may miss before its VM
// is critical.
const HeartbeatsMissed = 3

// Health is a VM's replication health, as ASR's replicated items show it
// beside the protection state.
type Health string

const (
	HealthHealthy  Health = "healthy"
	HealthWarning  Health = "warning"
	HealthCritical Health = "critical"
	// HealthNone: this process server receives no replication of the VM
	// in its state (failed over, committed; reverse replication is the
	// master target's).
	HealthNone Health = "none"
)

// Health events, raised when a VM's health changes.
const EventHealthChanged = "health-changed"

// VMHealth is a VM's health and what it is made of.
type VMHealth struct {
	Health Health
	Reason string
	Link   ingest.Link
	// Silence is the age of the agent's last message (while connected).
	Silence time.Duration
	// Copy is an initial replication or resync under way.
	Copy   ingest.Copy
	Copies bool
	// RPO and its threshold (RPO 0: no point yet).
	RPO, Threshold time.Duration
}

// vmHealth gathers what vm's health is judged on and judges it.
func (s *Server) vmHealth(vm journal.VM, st VMState) VMHealth {
	h := VMHealth{Link: s.recv.Link(vm.Name)}
	h.Copy, h.Copies = s.recv.CopyProgress(vm.Name)
	if pol, err := s.policyFor(string(vm.Name)); err == nil {
		h.Threshold = pol.RPOThreshold
	}
	if !vm.LatestPoint.IsZero() {
		h.RPO = max(0, s.clock.Now().Sub(vm.LatestPoint))
	}
	// Heartbeats are wall-clock time, also when the server's clock is
	// simulated.
	judge(&h, vm.Consistent, st, s.cfg.Heartbeat, time.Now())
	return h
}

// judge sets h's health and reason from what h holds, the replica's
// consistency and the VM's state; hb is the heartbeat interval of an agent
// that named none, now the wall clock. The worst finding wins; the reason
// names it first (and the next, when there are more).
func judge(h *VMHealth, consistent bool, st VMState, hb time.Duration, now time.Time) {
	h.Health, h.Silence = HealthHealthy, 0
	if h.Link.Connected && !h.Link.LastSeen.IsZero() {
		h.Silence = max(0, now.Sub(h.Link.LastSeen))
	}
	if st.State != "" && st.State != StateEnabling && st.State != StateProtected {
		h.Health, h.Reason = HealthNone, fmt.Sprintf("%s: this site receives no replication of the VM", st.State)
		return
	}
	// Findings: the worst level found wins, and the reason names the worst
	// first.
	type finding struct {
		rank int // 2 critical, 1 warning, 0 neither (information)
		text string
	}
	var found []finding
	add := func(level Health, format string, args ...any) {
		rank := 1
		if level == HealthCritical {
			rank = 2
		}
		found = append(found, finding{rank, fmt.Sprintf(format, args...)})
	}
	note := func(text string) { found = append(found, finding{0, text}) }
	if h.Link.Heartbeat > 0 {
		hb = h.Link.Heartbeat
	}
	switch {
	case st.DiskConflict != "":
		add(HealthCritical, "replication stopped: %s", st.DiskConflict)
	case !h.Link.Connected && h.Link.LastSeen.IsZero():
		add(HealthCritical, "agent not connected since the process server started")
	case !h.Link.Connected && now.Sub(h.Link.Left) < hb:
		// A stream that ended a moment ago is usually being opened again
		// (the agent reconnects within milliseconds): no alarm yet.
		note("agent reconnecting")
	case !h.Link.Connected:
		add(HealthCritical, "agent disconnected; last heard from %s ago", roundFor(now.Sub(h.Link.LastSeen)))
	case !h.Link.Busy && h.Silence > HeartbeatsMissed*hb:
		add(HealthCritical, "agent silent for %s (%d heartbeats of %s missed)", roundFor(h.Silence), int(h.Silence/hb), hb)
	}
	if h.Threshold > 0 && h.RPO > 2*h.Threshold {
		add(HealthCritical, "RPO %s is above twice the threshold %s", h.RPO.Round(time.Second), h.Threshold)
	} else if h.Threshold > 0 && h.RPO > h.Threshold {
		add(HealthWarning, "RPO %s is above the threshold %s", h.RPO.Round(time.Second), h.Threshold)
	}
	if st.AgentConflict != "" {
		add(HealthWarning, "%s", st.AgentConflict)
	}
	if !consistent && !h.Copies {
		add(HealthWarning, "resync under way: the replica is not write-ordered until it ends")
	}
	if h.Copies {
		what := "resync"
		if st.State == StateEnabling || st.State == "" {
			what = "initial replication"
		}
		msg := fmt.Sprintf("%s %.0f%%", what, h.Copy.Progress*100)
		if h.Copy.Left > 0 {
			msg += fmt.Sprintf(", %s left", h.Copy.Left.Round(time.Second))
		}
		note(msg)
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].rank > found[j].rank })
	h.Health = HealthHealthy
	switch {
	case len(found) > 0 && found[0].rank == 2:
		h.Health = HealthCritical
	case len(found) > 0 && found[0].rank == 1:
		h.Health = HealthWarning
	}
	switch len(found) {
	case 0:
		h.Reason = "replicating"
	case 1:
		h.Reason = found[0].text
	default:
		h.Reason = found[0].text + "; " + found[1].text
		if len(found) > 2 {
			h.Reason += fmt.Sprintf(" (+%d more)", len(found)-2)
		}
	}
}

// roundFor rounds a duration for people: to milliseconds under 10 s.
func roundFor(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

// checkHealth raises a health-changed event when a VM's health level
// changes (the reason alone changing raises none).
func (s *Server) checkHealth(ctx context.Context) error {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		st, _, err := s.vmState(ctx, string(vm.Name))
		if err != nil {
			return err
		}
		h := s.vmHealth(vm, st)
		s.healthMu.Lock()
		before, seen := s.lastHealth[vm.Name]
		s.lastHealth[vm.Name] = h.Health
		s.healthMu.Unlock()
		if !seen || before == h.Health {
			continue
		}
		detail := fmt.Sprintf("%s -> %s: %s", before, h.Health, h.Reason)
		if h.Health == HealthCritical {
			s.log.Warn("replication health", "vm", vm.Name, "detail", detail)
		} else {
			s.log.Info("replication health", "vm", vm.Name, "detail", detail)
		}
		s.event(Event{Time: s.clock.Now(), VM: string(vm.Name), Kind: EventHealthChanged, Detail: detail})
	}
	return nil
}

// healthLevels are every Health, for the state-set metric.
var healthLevels = []Health{HealthHealthy, HealthWarning, HealthCritical, HealthNone}

// healthCollector exports each VM's health, state and agent link at
// scrape time, and the server's build.
type healthCollector struct {
	s         *Server
	health    *prometheus.Desc
	state     *prometheus.Desc
	connected *prometheus.Desc
	silence   *prometheus.Desc
	build     *prometheus.Desc
}

func newHealthCollector(s *Server) *healthCollector {
	return &healthCollector{s: s,
		health:    prometheus.NewDesc("ferry_ps_vm_health", "1 for a VM's replication health (healthy, warning, critical or none), 0 for the others.", []string{"vm", "health"}, nil),
		state:     prometheus.NewDesc("ferry_ps_vm_state", "1 for a VM's protection state, 0 for the others.", []string{"vm", "state"}, nil),
		connected: prometheus.NewDesc("ferry_ps_agent_connected", "1 while a VM's agent has a stream open.", []string{"vm"}, nil),
		silence:   prometheus.NewDesc("ferry_ps_agent_heartbeat_age_seconds", "Seconds since a connected agent's last message.", []string{"vm"}, nil),
		build:     prometheus.NewDesc("ferry_ps_build_info", "The process server's build: 1, with its version.", []string{"version"}, nil),
	}
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

var allStates = []State{StateEnabling, StateProtected, StateFailedOver, StateCommitted, StateReprotected, StateFailedBack, StateFailbackCommitted}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.build, prometheus.GaugeValue, 1, cli.Version())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vms, err := c.s.j.VMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		st, _, err := c.s.vmState(ctx, string(vm.Name))
		if err != nil {
			continue
		}
		name := string(vm.Name)
		h := c.s.vmHealth(vm, st)
		for _, l := range healthLevels {
			ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, b2f(h.Health == l), name, string(l))
		}
		for _, l := range allStates {
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, b2f(st.State == l), name, string(l))
		}
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, b2f(h.Link.Connected), name)
		if h.Link.Connected {
			ch <- prometheus.MustNewConstMetric(c.silence, prometheus.GaugeValue, h.Silence.Seconds(), name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
