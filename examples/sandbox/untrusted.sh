#!/bin/sh
# Code we do not trust: it tries to leave the sandbox in a few common ways and reports each.
echo "running as $(id -u):$(id -g)"
if wget -q -O /dev/null http://deb.debian.org/ 2>/dev/null; then echo "network: reachable"; else echo "network: unreachable"; fi
if touch /etc/owned 2>/dev/null; then echo "root filesystem: writable"; else echo "root filesystem: read-only"; fi
echo "capabilities: $(grep CapEff /proc/self/status | tr -d '\t')"
# A fork bomb in miniature, in a subshell so that its failure can be reported: 64 sleepers
# against a limit of 32 processes.
if ( i=0; while [ $i -lt 64 ]; do sleep 5 & i=$((i + 1)); done ) 2>/dev/null; then
  echo "processes: 64 started"
else
  echo "processes: limited (fork failed)"
fi
echo "something for stderr" >&2
exit 3
