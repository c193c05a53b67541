#!/bin/sh
# Before removing ferry-server: stop its services. The journal
# (/var/lib/ferry) and the CA (/etc/ferry/ca) stay.
set -e
if [ -d /run/systemd/system ]; then
	systemctl stop ferry-ps.service ferry-mt.service 2>/dev/null || true
fi
exit 0
