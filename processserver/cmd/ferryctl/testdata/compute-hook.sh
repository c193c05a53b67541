#!/bin/sh
# A compute hook for ferry-ps --compute-hook, used by the tests: each "VM"
# is a directory under $FERRY_HOOK_DIR holding its disk list and state. A
# real hook would call a hypervisor or cloud API in each branch.
set -e
dir=${FERRY_HOOK_DIR:?set FERRY_HOOK_DIR}
action=$1
shift
case "$action" in
create)
	name=$1 net=$2 kind=$3
	shift 3
	id="$name-$(date +%s%N)"
	mkdir -p "$dir/$id"
	echo "$name" >"$dir/$id/name"
	for d in "$@"; do echo "$d" >>"$dir/$id/disks"; done
	echo "$net" >"$dir/$id/network"
	echo "$id"
	if [ "$kind" = test ]; then echo isolated=1; else echo public_ip=203.0.113.7; fi
	echo ports=22
	# A test can hold the hook here, after the machine exists.
	while [ -e "$dir/.hold-create" ]; do sleep 0.05; done
	;;
start) echo running >"$dir/$1/state" ;;
stop) [ -d "$dir/$1" ] && echo stopped >"$dir/$1/state" || true ;;
delete) rm -rf "${dir:?}/$1" ;;
console) echo "hook VM $1 booted" ;;
process) id=$1; shift; echo "$*" >"$dir/$id/processed" ;;
find)
	for n in "$dir"/*/name; do
		[ -e "$n" ] && [ "$(cat "$n")" = "$1" ] && basename "$(dirname "$n")"
	done
	true
	;;
*) echo "unknown action $action" >&2; exit 2 ;;
esac
