package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// child is a Ferry server run as its own process, so that its CPU time and
// memory are its own.
type child struct {
	cmd  *exec.Cmd
	Addr string
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
	args := append([]string{"serve", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "", "--log-level", "error", "--insecure"}, extra...)
	cmd := exec.Command(filepath.Join(bin, "ferry-ps"), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ferry-ps (build it with make build, or pass --bin): %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return &child{cmd: cmd, Addr: addr}, nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return nil, fmt.Errorf("ferry-ps did not listen on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop ends the process with SIGTERM and waits.
func (c *child) stop() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	return c.cmd.Wait()
}
