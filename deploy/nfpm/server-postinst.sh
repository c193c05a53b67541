#!/bin/sh
# After installing ferry-server: the deployment's CA, created once (like an
# SSH host key), so that ferry-ps starts with TLS from the first run; the
# units known to systemd. Nothing is started: an operator checks
# /etc/ferry/ps.yaml first (ferry-ps config check).
set -e
if [ ! -e /etc/ferry/ca/ca.crt ]; then
	mkdir -p /etc/ferry
	ferry-ps ca init --ca /etc/ferry/ca --host "$(hostname -f 2>/dev/null || hostname)" >/dev/null
	echo "ferry-server: the deployment's CA is in /etc/ferry/ca"
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
