package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver/client"
)

// child is a Ferry server run as its own process, so that its CPU time and
// memory are its own.
type child struct {
	cmd  *exec.Cmd
	Addr string
	// Metrics is the admin address serving /metrics.
	Metrics string
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startPS runs bin/ferry-ps on a free loopback port with its data in dir.
func startPS(ctx context.Context, bin, dir string, extra ...string) (*child, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	maddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", maddr, "--log-level", "error", "--insecure"}, extra...)
	cmd := exec.Command(filepath.Join(bin, "ferry-ps"), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ferry-ps (build it with make build, or pass --bin): %w", err)
	}
	if err := waitTCP(addr, 10*time.Second); err != nil {
		cmd.Process.Kill()
		return nil, fmt.Errorf("ferry-ps did not listen on %s: %w", addr, err)
	}
	return &child{cmd: cmd, Addr: addr, Metrics: maddr}, nil
}

// waitTCP waits until addr accepts connections.
func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// metric sums every series of a metric on the child's /metrics.
func (c *child) metric(ctx context.Context, name string) (float64, error) {
	return client.Metric(ctx, c.Metrics, name)
}

// stop ends the process with SIGTERM and waits.
func (c *child) stop() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	return c.cmd.Wait()
}

// startAgent protects one new sparse disk image of size bytes in dir
// (dir/NAME.img, disk "os") with an in-process agent replicating to the
// process server at addr, and waits for its initial copy.
func startAgent(ctx context.Context, addr, dir, name string, size int64) (*benchAgent, error) {
	disk, err := blockdev.CreateFile(filepath.Join(dir, name+".img"), size)
	if err != nil {
		return nil, err
	}
	a, err := openAgent(ctx, addr, dir, name, disk)
	if err != nil {
		return nil, err
	}
	if err := a.WaitSynced(ctx); err != nil {
		a.Close(ctx)
		return nil, err
	}
	return a, nil
}

// benchAgent is an in-process agent and the disk it protects.
type benchAgent struct {
	*agent.Agent
	disk *blockdev.File
}

// Close stops the agent, then closes its disk.
func (a *benchAgent) Close(ctx context.Context) error {
	return errors.Join(a.Agent.Close(ctx), a.disk.Close())
}

// openAgent starts an in-process agent protecting disk as VM name, its
// configuration changed by tune; it closes disk when it fails.
func openAgent(ctx context.Context, addr, dir, name string, disk *blockdev.File, tune ...func(*agent.Config)) (*benchAgent, error) {
	cfg := agent.Config{VM: name, Disks: []agent.Disk{{Name: "os", Device: disk}}, StateDir: filepath.Join(dir, name+".agent"),
		Target: addr, DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger: quietLogger(), Registerer: prometheus.NewRegistry(), ShutdownTimeout: time.Second}
	for _, f := range tune {
		f(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		disk.Close()
		return nil, err
	}
	if err := a.Open(ctx); err != nil {
		disk.Close()
		return nil, err
	}
	return &benchAgent{Agent: a, disk: disk}, nil
}
