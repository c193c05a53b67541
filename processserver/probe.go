package processserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// MachineProber is a Compute that can tell a machine's state and address,
// so readiness is probed on the machine instead of taken from what the
// agent reported.
type MachineProber interface {
	// State is "running", "shut off", "crashed", "paused" or "shutting down".
	State(ctx context.Context, id string) (string, error)
	// Address is the machine's IP address, "" while it has none.
	Address(ctx context.Context, id string) (string, error)
}

// ProbeSSH connects to addr and reads the SSH server's identification line
// (RFC 4253: "SSH-2.0-...").
func ProbeSSH(ctx context.Context, addr string) (string, error) {
	c, err := dialProbe(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	r := bufio.NewReader(io.LimitReader(c, 8<<10))
	for {
		line, err := r.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(line, "SSH-") {
			return line, nil
		}
		if err != nil {
			if line != "" {
				return "", fmt.Errorf("no SSH identification, got %q", line)
			}
			return "", fmt.Errorf("no SSH identification: %w", err)
		}
	}
}

// dialProbe connects to addr with the context's deadline on every read
// and write.
func dialProbe(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c, nil
}

// x224Request is a TPKT-framed X.224 Connection Request with an RDP
// negotiation request (TLS and CredSSP), as an RDP client opens with.
var x224Request = []byte{
	0x03, 0x00, 0x00, 0x13, // TPKT version 3, length 19
	0x0e, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, // X.224 CR: length 14, code 0xE0
	0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, // RDP_NEG_REQ: TLS | CredSSP
}

// ProbeRDP sends an X.224 Connection Request to addr and checks that an
// X.224 Connection Confirm answers it.
func ProbeRDP(ctx context.Context, addr string) (string, error) {
	c, err := dialProbe(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write(x224Request); err != nil {
		return "", err
	}
	var hdr [7]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", fmt.Errorf("no X.224 answer: %w", err)
	}
	if hdr[0] != 3 || hdr[5]&0xf0 != 0xd0 {
		return "", fmt.Errorf("not an X.224 Connection Confirm: % x", hdr)
	}
	return "X.224 Connection Confirm", nil
}

// probeReadiness checks the machine itself: that it runs, that it got an
// address, that its remote-access port answers (SSH: the banner; RDP: an
// X.224 Connection Confirm) before the deadline, and what its console
// shows. It returns the findings and the banner read.
func (s *Server) probeReadiness(ctx context.Context, p MachineProber, m Machine, inst Instance, deadline time.Duration) []Finding {
	var f []Finding
	add := func(check string, ok bool, detail string) {
		f = append(f, Finding{Check: check, OK: ok, Detail: detail})
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	st, err := p.State(ctx, inst.ID)
	switch {
	case err != nil:
		add("vm running", false, "cannot read the VM's state: "+err.Error())
		return f
	case st != "running":
		add("vm running", false, "the VM is "+st+", not running: see its boot console")
		return f
	}
	add("vm running", true, "running")
	if inst.Network == "" {
		f = append(f, Finding{Check: "address", Unknown: true, Detail: "no network interface (test failover without a test network): nothing to connect to"})
		return f
	}
	var addr string
	for addr == "" {
		if addr, err = p.Address(ctx, inst.ID); err == nil && addr != "" {
			break
		}
		if st, serr := p.State(ctx, inst.ID); serr == nil && st != "running" {
			add("vm running", false, "the VM stopped: it is "+st)
			return f
		}
		select {
		case <-ctx.Done():
			add("address", false, fmt.Sprintf("no DHCP lease on network %s within %v: is DHCP on in the guest and on the network?", inst.Network, deadline))
			return f
		case <-time.After(500 * time.Millisecond):
		}
	}
	add("address", true, addr+" on network "+inst.Network)
	port, probe, what := 22, ProbeSSH, "ssh"
	if m.OS == "windows" {
		port, probe, what = 3389, ProbeRDP, "rdp"
	}
	target := net.JoinHostPort(addr, strconv.Itoa(port))
	var lastErr error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		banner, err := probe(pctx, target)
		pcancel()
		if err == nil {
			add(what+" answers", true, banner)
			return f
		}
		lastErr = err
		select {
		case <-ctx.Done():
			add(what+" answers", false, fmt.Sprintf("%s did not answer within %v: %v (is the service started at boot and allowed by the guest's firewall?)", target, deadline, lastErr))
			return f
		case <-time.After(500 * time.Millisecond):
		}
	}
}
