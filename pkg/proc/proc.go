// Package proc runs the commands operators configure (hooks, plan actions)
// so that none outlives its bound: each in its own process group, killed
// whole.
package proc

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"time"
)

// RunInGroup runs cmd in its own process group, bounded by ctx (and by
// timeout when positive): when the time is up the whole group is killed,
// children that forked included, and whatever the command left running in
// its group is killed when it ends. It reports whether the time ran out.
func RunInGroup(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) (timedOut bool, err error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// Not exec.CommandContext, whose cancel kills only the process: here
	// the whole group goes.
	if err := cmd.Start(); err != nil {
		return false, err
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	killedc := make(chan bool, 1)
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-pid, syscall.SIGKILL)
			killedc <- true
		case <-done:
			killedc <- false
		}
	}()
	err = cmd.Wait()
	close(done)
	syscall.Kill(-pid, syscall.SIGKILL)
	killed := <-killedc
	st := cmd.ProcessState
	if st != nil && st.Success() && errors.Is(err, exec.ErrWaitDelay) {
		// It ended well but left a child holding its output: the child went
		// with the group.
		err = nil
	}
	// Timed out only if the command itself was still running when the
	// group was killed.
	return killed && (st == nil || !st.Exited()), err
}
