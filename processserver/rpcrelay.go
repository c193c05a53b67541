package processserver

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// replication is the process server's Replication service. Streams of
// VMs it protects go to its receiver. A reprotected VM's stream (the
// recovered VM's agent replicating back) is relayed to the master target,
// as ASR's recovery-site process server does for VMware VMs and physical
// servers: each batch is verified here (record checks, data xxhash) and
// sent on over the WAN compressed with zstd; the master target's answers
// (acknowledgements, the failback's shutdown command) come back the same
// way.
type replication struct {
	ferryv1.UnimplementedReplicationServer
	s *Server
}

type relayMetrics struct {
	streams  prometheus.Counter
	received prometheus.Counter // write payload bytes from agents
}

func newRelayMetrics(reg prometheus.Registerer) relayMetrics {
	m := relayMetrics{
		streams: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_ps_relay_streams_total",
			Help: "Reverse replication streams relayed to the master target."}),
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_ps_relay_received_bytes_total",
			Help: "Write payload bytes received from recovered VMs' agents and relayed, verified and compressed, to the master target."}),
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.received)
	}
	return m
}

// relayed reports whether an agent of vm at epoch replicates through this
// server to the master target: the VM is reprotected and the agent is of
// the reverse direction (the epoch the reprotect gave the master target).
// Any other agent of the VM, such as the primary's started ahead with the
// next epoch, is this server's own to answer.
func (s *Server) relayed(ctx context.Context, vm string, epoch uint64) bool {
	if s.mt == nil {
		return false
	}
	st, err := s.ctl.state(vm)
	if err != nil || st.State != StateReprotected {
		return false
	}
	v, err := s.j.VM(ctx, ferry.VMID(vm))
	return err == nil && uint64(v.Epoch) == epoch
}

// peeked is a stream whose first message was read already.
type peeked struct {
	ferryv1.Replication_ReplicateServer
	first *ferryv1.AgentMessage
}

func (p *peeked) Recv() (*ferryv1.AgentMessage, error) {
	if m := p.first; m != nil {
		p.first = nil
		return m, nil
	}
	return p.Replication_ReplicateServer.Recv()
}

func (r *replication) Replicate(stream ferryv1.Replication_ReplicateServer) error {
	first, err := r.s.recv.ReceiveHello(stream)
	if err != nil {
		return err
	}
	if h := first.GetHello(); h != nil && r.s.relayed(stream.Context(), h.GetVm(), h.GetEpoch()) {
		return r.s.relay(stream, first)
	}
	return r.s.recv.Replicate(&peeked{Replication_ReplicateServer: stream, first: first})
}

func (r *replication) BlockHashes(req *ferryv1.BlockHashesRequest, stream ferryv1.Replication_BlockHashesServer) error {
	if !r.s.relayed(stream.Context(), req.GetVm(), req.GetEpoch()) {
		return r.s.recv.BlockHashes(req, stream)
	}
	if err := tlsca.AgentAuthorizer(r.s.cfg.TLS)(stream.Context(), req.GetVm()); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	up, err := ferryv1.NewReplicationClient(r.s.mtConn).BlockHashes(stream.Context(), req, grpc.UseCompressor(wire.Zstd))
	if err != nil {
		return err
	}
	for {
		m, err := up.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
}

// relay carries one recovered VM's stream to the master target.
func (s *Server) relay(agent ferryv1.Replication_ReplicateServer, hello *ferryv1.AgentMessage) error {
	vm := hello.GetHello().GetVm()
	ctx, cancel := context.WithCancel(agent.Context())
	defer cancel()
	if err := tlsca.AgentAuthorizer(s.cfg.TLS)(ctx, vm); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	up, err := ferryv1.NewReplicationClient(s.mtConn).Replicate(ctx, grpc.UseCompressor(wire.Zstd))
	if err != nil {
		return status.Errorf(codes.Unavailable, "vm %s: the master target cannot be reached: %v", vm, err)
	}
	if err := up.Send(hello); err != nil {
		return relayErr(up, err)
	}
	s.relayMetrics.streams.Inc()
	s.log.Info("relaying reverse replication to the master target", "vm", vm)
	// The master target's answers go back to the agent from here; only
	// this goroutine sends on the agent's stream.
	down := make(chan error, 1)
	go func() {
		for {
			m, err := up.Recv()
			if err != nil {
				down <- err
				return
			}
			if err := agent.Send(m); err != nil {
				down <- err
				return
			}
		}
	}()
	fromAgent := make(chan error, 1)
	go func() {
		for {
			m, err := agent.Recv()
			if err != nil {
				fromAgent <- err
				return
			}
			if b := m.GetBatch(); b != nil {
				if err := ingest.VerifyBatch(vm, b); err != nil {
					fromAgent <- err
					return
				}
				var n int
				for _, rec := range b.GetRecords() {
					n += len(rec.GetWrite().GetData())
				}
				s.relayMetrics.received.Add(float64(n))
			}
			if err := up.Send(m); err != nil {
				// The master target's stream ended (or broke): its status
				// comes from the receiving goroutine, the only one that
				// calls Recv.
				fromAgent <- errUpstreamEnded
				return
			}
		}
	}()
	select {
	case err := <-down:
		if err == io.EOF {
			return nil
		}
		return err // the master target's status, as it gave it
	case err := <-fromAgent:
		switch {
		case errors.Is(err, errUpstreamEnded):
			if err := <-down; err != io.EOF {
				return err
			}
			return status.Error(codes.Unavailable, "the master target ended the stream")
		case errors.Is(err, io.EOF):
			up.CloseSend()
			if err := <-down; err != io.EOF {
				return err
			}
			return nil
		}
		return err
	}
}

// relayErr is the master target's status when a send failed because its
// stream ended; only for sends made before anyone else reads the stream.
func relayErr(up ferryv1.Replication_ReplicateClient, err error) error {
	if err == io.EOF {
		if _, rerr := up.Recv(); rerr != nil && rerr != io.EOF {
			return rerr
		}
		return status.Error(codes.Unavailable, "the master target ended the stream")
	}
	return fmt.Errorf("relay to the master target: %w", err)
}
