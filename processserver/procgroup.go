package processserver

import (
	"context"
	"os/exec"
	"syscall"
	"time"
)

// runInGroup runs cmd in its own process group, bounded by ctx (and by
// timeout when positive): when the time is up the whole group is killed,
// children that forked included, and whatever the command left running in
// its group is killed when it ends. It reports whether the time ran out.
func runInGroup(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) (timedOut bool, err error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// exec.CommandContext's cancel kills only the process: the group goes.
	if err := cmd.Start(); err != nil {
		return false, err
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	killed := make(chan bool, 1)
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-pid, syscall.SIGKILL)
			killed <- true
		case <-done:
			killed <- false
		}
	}()
	err = cmd.Wait()
	close(done)
	syscall.Kill(-pid, syscall.SIGKILL)
	return <-killed, err
}
