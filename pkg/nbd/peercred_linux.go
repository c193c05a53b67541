package nbd

import (
	"fmt"
	"net"
	"syscall"
)

// unixPeer returns the credentials of the process at the other end of a
// Unix socket, as the kernel recorded them when it connected.
func unixPeer(c *net.UnixConn) (uid, pid int, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, 0, err
	}
	if cerr != nil {
		return -1, 0, fmt.Errorf("peer credentials: %w", cerr)
	}
	return int(cred.Uid), int(cred.Pid), nil
}
