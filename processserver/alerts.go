package processserver

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// Event kinds.
const (
	EventRPOExceeded  = "rpo-exceeded"
	EventRPORecovered = "rpo-recovered"
)

// Event is something that happened to a VM that operators must see.
type Event struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
}

var bucketEvents = []byte("events")

func (c *control) addEvent(e Event) error {
	buf, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return c.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketEvents)
		if err != nil {
			return err
		}
		id, _ := b.NextSequence()
		return b.Put(binary.BigEndian.AppendUint64(nil, id), buf)
	})
}

// Events returns the events of vm (all VMs when empty), oldest first.
func (s *Server) Events(ctx context.Context, vm string) ([]Event, error) {
	var out []Event
	err := s.ctl.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
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

// checkRPO raises an alert for every VM whose RPO (age of its newest
// point) is above its policy's threshold, and clears it when the RPO is back under:
// the ferry_ps_rpo_alert gauge and an event each time.
func (s *Server) checkRPO(ctx context.Context) error {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	for _, vm := range vms {
		st, err := s.ctl.state(string(vm.Name))
		if err != nil || (st.State != "" && st.State != StateEnabling && st.State != StateProtected) || vm.LatestPoint.IsZero() {
			continue
		}
		pol, err := s.policyFor(string(vm.Name))
		if err != nil {
			return err
		}
		threshold := pol.RPOThreshold
		rpo := now.Sub(vm.LatestPoint)
		over := rpo > threshold
		s.alertMu.Lock()
		was := s.alerting[string(vm.Name)]
		s.alerting[string(vm.Name)] = over
		s.alertMu.Unlock()
		v := 0.0
		if over {
			v = 1
		}
		s.rpoAlert.WithLabelValues(string(vm.Name)).Set(v)
		switch {
		case over && !was:
			s.log.Warn("RPO above threshold", "vm", vm.Name, "rpo", rpo.Round(time.Second), "threshold", threshold)
			s.ctl.addEvent(Event{Time: now, VM: string(vm.Name), Kind: EventRPOExceeded,
				Detail: fmt.Sprintf("RPO %v is above the %v threshold (newest point %s)", rpo.Round(time.Second), threshold, vm.LatestPoint.Format(time.RFC3339))})
		case !over && was:
			s.log.Info("RPO back under threshold", "vm", vm.Name, "rpo", rpo.Round(time.Second))
			s.ctl.addEvent(Event{Time: now, VM: string(vm.Name), Kind: EventRPORecovered,
				Detail: fmt.Sprintf("RPO %v is back under the %v threshold", rpo.Round(time.Second), threshold)})
		}
	}
	return nil
}

// alerting reports whether vm's RPO is above its threshold now.
func (s *Server) alertingFor(vm string) bool {
	s.alertMu.Lock()
	defer s.alertMu.Unlock()
	return s.alerting[vm]
}

func newRPOAlert(reg prometheus.Registerer) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_ps_rpo_alert", Help: "1 while a VM's RPO is above the threshold."}, []string{"vm"})
	if reg != nil {
		reg.MustRegister(g)
	}
	return g
}
