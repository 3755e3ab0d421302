#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by start_cluster.sh.
#
# Cancels the jobs still queued or running on it, then stops slurmd, slurmctld,
# slurmdbd, the private mariadbd and munged through the pid files that
# start_cluster.sh left under $ELASTIC_SLURM_DIR (default /var/lib/elastic-slurm).
# Daemons it did not start are left alone; packages stay installed.
#
#   stop_cluster.sh           stop; keep slurm.conf, state and logs
#   stop_cluster.sh --purge   also remove /etc/slurm/slurm.conf and slurmdbd.conf
#                             (only when start_cluster.sh wrote them) and
#                             $ELASTIC_SLURM_DIR (state, logs, accounting database)
set -euo pipefail

CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
HEADER="# Written by elastic benchmarks/slurm/start_cluster.sh: it may replace this file."
STATE_ROOT="${ELASTIC_SLURM_DIR:-/var/lib/elastic-slurm}"
RUN="$STATE_ROOT/run"
PURGE=0
case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

say() { printf '[stop_cluster] %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "[stop_cluster] ERROR: must run as root" >&2; exit 1; }

. "$(dirname "$0")/lib.sh"  # alive()

stop_pid() {  # pidfile comm
    local pidfile="$1" comm="$2" pid
    if ! alive "$pidfile" "$comm"; then
        say "$comm not running (no live pid in $pidfile)"
        rm -f "$pidfile"
        return 0
    fi
    pid="$(cat "$pidfile")"
    say "stopping $comm (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$comm (pid $pid) still alive after 15s: SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# Jobs first, while slurmctld and slurmd can still end them cleanly.
if alive "$RUN/slurmctld.pid" slurmctld && [ -r "$CONF" ]; then
    jobs="$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break
            sleep 1
        done
    fi
fi

stop_pid "$RUN/slurmd.pid" slurmd
stop_pid "$RUN/slurmctld.pid" slurmctld
if [ -e "$RUN/slurmdbd.pid" ] || [ -e "$STATE_ROOT/db/mariadbd.pid" ]; then
    stop_pid "$RUN/slurmdbd.pid" slurmdbd
    stop_pid "$STATE_ROOT/db/mariadbd.pid" mariadbd
fi
# munged only when it is the one start_cluster.sh started (same pid).
if [ -s "$RUN/munged.pid" ] && [ "$(cat "$RUN/munged.pid")" = "$(cat /run/munge/munged.pid 2>/dev/null)" ]; then
    stop_pid "$RUN/munged.pid" munged
    rm -f /run/munge/munged.pid
elif [ -s "$RUN/munged.pid" ]; then
    say "munged: the running one was not started by start_cluster.sh, left alone"
else
    say "munged: no pid file from start_cluster.sh, nothing to stop"
    rm -f "$RUN/munged.pid"
fi

if [ "$PURGE" = 1 ]; then
    for f in "$CONF" "$DBD_CONF"; do
        if [ -e "$f" ] && grep -qxF "$HEADER" "$f"; then
            say "removing $f"
            rm -f "$f"
        elif [ -e "$f" ]; then
            say "$f was not written by start_cluster.sh: kept"
        fi
    done
    # Only a directory laid out by start_cluster.sh.
    if [ -d "$STATE_ROOT/state" ] && [ -d "$STATE_ROOT/spool" ] && [ "$(cd "$STATE_ROOT" && pwd -P)" != / ]; then
        say "removing $STATE_ROOT"
        rm -rf "$STATE_ROOT"
    else
        say "$STATE_ROOT does not look like start_cluster.sh's directory: kept"
    fi
fi
say "done (packages stay installed)"
