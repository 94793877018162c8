#!/usr/bin/env bash
# Stop the daemons started by .ci/slurm-up.sh, by their recorded PIDs only.
# Tolerates processes that are already gone.
set -euo pipefail

PIDFILE=${SLURM_PIDFILE:-/tmp/tarot-slurm.pids}

if [ ! -f "$PIDFILE" ]; then
    echo "slurm-down.sh: no $PIDFILE, nothing to stop"
    exit 0
fi

# Stop in reverse dependency order: slurmd, slurmctld, then munged.
for name in slurmd slurmctld munged; do
    for pid in $(awk -v n="$name" '$1 == n {print $2}' "$PIDFILE"); do
        # only signal it if the PID still belongs to that daemon
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        if [ "$comm" != "$name" ]; then
            echo "$name ($pid) not running"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name ($pid) did not exit on TERM, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "$name ($pid) stopped"
    done
done
rm -f "$PIDFILE"
