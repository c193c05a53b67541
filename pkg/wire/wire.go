// Package wire converts between Ferry's shared types (the root package,
// job steps, policies, plans) and the generated gRPC messages, and builds
// the records and commands of the replication stream. Only it, the
// servers' rpc*.go adapters and the stream's receiver (pkg/ingest) import
// the generated code; each server converts its own types in its adapter.
package wire

import (
	"encoding/binary"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/job"
	"github.com/ferrydr/ferry/pkg/retention"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Consistency converts a wire consistency; ok is false for an unknown one.
func Consistency(c ferryv1.Consistency) (ferry.Consistency, bool) {
	switch c {
	case ferryv1.Consistency_CONSISTENCY_CRASH:
		return ferry.Crash, true
	case ferryv1.Consistency_CONSISTENCY_APP:
		return ferry.App, true
	}
	return 0, false
}

// ConsistencyProto converts a domain consistency.
func ConsistencyProto(c ferry.Consistency) ferryv1.Consistency {
	switch c {
	case ferry.Crash:
		return ferryv1.Consistency_CONSISTENCY_CRASH
	case ferry.App:
		return ferryv1.Consistency_CONSISTENCY_APP
	}
	return ferryv1.Consistency_CONSISTENCY_UNSPECIFIED
}

// Disks converts a hello's disk list.
func Disks(in []*ferryv1.DiskInfo) []ferry.Disk {
	out := make([]ferry.Disk, len(in))
	for i, d := range in {
		out[i] = ferry.Disk{Name: ferry.DiskID(d.GetName()), Size: int64(d.GetSizeBytes())}
	}
	return out
}

// DisksProto converts a VM's disks.
func DisksProto(in []ferry.Disk) []*ferryv1.DiskInfo {
	out := make([]*ferryv1.DiskInfo, len(in))
	for i, d := range in {
		out[i] = &ferryv1.DiskInfo{Name: string(d.Name), SizeBytes: uint64(d.Size)}
	}
	return out
}

// PointProto converts a recovery point.
func PointProto(p ferry.Point) *ferryv1.RecoveryPoint {
	return &ferryv1.RecoveryPoint{
		Id:           uint64(p.ID),
		Consistency:  ConsistencyProto(p.Consistency),
		Tag:          p.Tag,
		TimeUnixNano: unixNano(p.Time),
	}
}

// Point converts a recovery point from the wire.
func Point(vm ferry.VMID, p *ferryv1.RecoveryPoint) ferry.Point {
	c, _ := Consistency(p.GetConsistency())
	return ferry.Point{VM: vm, ID: ferry.Seq(p.GetId()), Consistency: c, Tag: p.GetTag(), Time: fromUnixNano(p.GetTimeUnixNano())}
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// RecordCheck is the check of a record: xxhash64 over its sequence and
// every field of its body, except a write's data (its xxhash covers that).
func RecordCheck(r *ferryv1.Record) uint64 {
	b := make([]byte, 0, 64)
	b = binary.LittleEndian.AppendUint64(b, r.GetSeq())
	switch body := r.GetBody().(type) {
	case *ferryv1.Record_Write:
		w := body.Write
		b = append(b, 'w')
		b = binary.LittleEndian.AppendUint32(b, w.GetDisk())
		b = binary.LittleEndian.AppendUint64(b, w.GetOffset())
		b = binary.LittleEndian.AppendUint32(b, w.GetLength())
		b = binary.LittleEndian.AppendUint64(b, w.GetXxhash())
		if w.GetZero() {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.LittleEndian.AppendUint64(b, uint64(len(w.GetData())))
	case *ferryv1.Record_Marker:
		m := body.Marker
		b = append(b, 'm', byte(m.GetConsistency()))
		b = binary.LittleEndian.AppendUint64(b, uint64(m.GetTimeUnixNano()))
		b = append(b, m.GetTag()...)
	case *ferryv1.Record_Drain:
		d := body.Drain
		b = append(b, 'd', byte(d.GetReason()))
		if d.GetBegin() {
			b = append(b, 1)
		}
	}
	return xxhash.Sum64(b)
}

// Seal sets a record's check; the sequence and body must be final.
func Seal(r *ferryv1.Record) *ferryv1.Record {
	r.Check = RecordCheck(r)
	return r
}

// StepsProto converts a job's steps.
func StepsProto(in []job.Step) []*ferryv1.JobStep {
	out := make([]*ferryv1.JobStep, len(in))
	for i, st := range in {
		out[i] = &ferryv1.JobStep{Name: st.Name, StartUnixNano: unixNano(st.Start), EndUnixNano: unixNano(st.End),
			Outcome: string(st.Outcome), Detail: st.Detail, WallNanos: int64(st.Wall)}
	}
	return out
}

// Steps converts a job's steps from the wire.
func Steps(in []*ferryv1.JobStep) []job.Step {
	out := make([]job.Step, len(in))
	for i, st := range in {
		out[i] = job.Step{Name: st.GetName(), Start: fromUnixNano(st.GetStartUnixNano()), End: fromUnixNano(st.GetEndUnixNano()),
			Outcome: ferry.Outcome(st.GetOutcome()), Detail: st.GetDetail(), Wall: time.Duration(st.GetWallNanos())}
	}
	return out
}

// PolicyProto converts a policy; vms are the VMs that follow it.
func PolicyProto(p retention.Policy, vms []string) *ferryv1.Policy {
	return &ferryv1.Policy{Name: p.Name, RetentionSeconds: int64(p.Retention / time.Second), CrashIntervalSeconds: int64(p.CrashInterval / time.Second),
		AppIntervalSeconds: int64(p.AppInterval / time.Second), RpoThresholdSeconds: int64(p.RPOThreshold / time.Second), Builtin: p.Builtin, Vms: vms}
}

// Policy converts a policy from the wire.
func Policy(p *ferryv1.Policy) retention.Policy {
	return retention.Policy{Name: p.GetName(), Retention: time.Duration(p.GetRetentionSeconds()) * time.Second,
		CrashInterval: time.Duration(p.GetCrashIntervalSeconds()) * time.Second, AppInterval: time.Duration(p.GetAppIntervalSeconds()) * time.Second,
		RPOThreshold: time.Duration(p.GetRpoThresholdSeconds()) * time.Second}
}
