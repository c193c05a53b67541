package processserver

import (
	"os"
	"syscall"
)

func canTraverse(st os.FileInfo, uid, gid int) bool {
	m := st.Mode().Perm()
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return m&0o001 != 0
	}
	switch {
	case int(s.Uid) == uid:
		return m&0o100 != 0
	case int(s.Gid) == gid:
		return m&0o010 != 0
	}
	return m&0o001 != 0
}
