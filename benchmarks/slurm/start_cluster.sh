#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine: munged, slurmctld, slurmd,
# and by default slurmdbd over a private MariaDB so that `sacct` works (submitit
# polls `sacct` for job states).
#
# Idempotent: installs Debian's slurm-wlm and munge (plus slurmdbd and
# mariadb-server for accounting) only when missing; writes /etc/slurm/slurm.conf
# and /etc/slurm/slurmdbd.conf only when absent or written by this script
# (header line below), and refuses to touch a Slurm configuration it did not
# write; starts only the daemons that are not running (restarts the ones whose
# configuration changed); waits for the node to be idle, then checks that
# srun, sbatch with --mem/--cpus-per-task/--time, a job array and sacct work.
#
# Needs root and no systemd: the daemons are started directly (setsid, stdio to
# files), run as root (SlurmUser=root), and keep pid files, logs, state, the
# database and the check jobs' outputs under $ELASTIC_SLURM_DIR.
#
# Environment (all optional):
#   ELASTIC_SLURM_DIR        state, pid files, logs (/var/lib/elastic-slurm)
#   ELASTIC_SLURM_PARTITION  partition name, the default one (debug)
#   ELASTIC_SLURM_CPUS       CPUs the node advertises (default: the real count from
#                            `slurmd -C`; more oversubscribes the cores and sets
#                            SlurmdParameters=config_overrides)
#   ELASTIC_SLURM_MEM_MB     RealMemory in MB (default: `slurmd -C` minus 512;
#                            more also sets config_overrides)
#   ELASTIC_SLURM_ACCOUNTING=0  no slurmdbd/MariaDB: `sacct` then fails, submitit
#                            logs "Bypassing sacct error" and only sees a job end
#                            through its result file
#   ELASTIC_SLURM_DB_PORT    port of the private MariaDB on 127.0.0.1 (3307)
#   ELASTIC_SLURM_SKIP_CHECKS=1  skip the srun/sbatch/array/sacct checks
#   ELASTIC_SLURM_TIMEOUT    seconds to wait for a daemon, the node, a check job (120)
#
# Exit status: 0 when the cluster is up (and the checks passed), 1 otherwise.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
DBD_CONF="$CONF_DIR/slurmdbd.conf"
HEADER="# Written by elastic benchmarks/slurm/start_cluster.sh: it may replace this file."
STATE_ROOT="${ELASTIC_SLURM_DIR:-/var/lib/elastic-slurm}"
PARTITION="${ELASTIC_SLURM_PARTITION:-debug}"
TIMEOUT="${ELASTIC_SLURM_TIMEOUT:-120}"
ACCOUNTING="${ELASTIC_SLURM_ACCOUNTING:-1}"
DB_PORT="${ELASTIC_SLURM_DB_PORT:-3307}"
CLUSTER=elastic
NODE="$(hostname -s)"

say() { printf '[start_cluster] %s\n' "$*"; }
die() { printf '[start_cluster] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts daemons as root)"

. "$(dirname "$0")/lib.sh"  # alive()

# stop_pid PIDFILE COMM: SIGTERM, wait up to 15 s, then SIGKILL.
stop_pid() {
    local pidfile="$1" comm="$2" pid
    alive "$pidfile" "$comm" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    say "stopping $comm (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$pidfile"
}

# ours FILE: FILE is absent or carries this script's header.
ours() { [ ! -e "$1" ] || grep -qxF "$HEADER" "$1"; }

# install_conf NEW DEST MODE: returns 0 when DEST was (re)written, 1 when up to date.
install_conf() {
    local new="$1" dest="$2" mode="$3"
    if [ -e "$dest" ]; then
        if cmp -s "$new" "$dest"; then
            say "$dest up to date"
            return 1
        fi
        say "updating $dest"
    else
        say "writing $dest"
    fi
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$new" "$dest"
    return 0
}

# wait_for SECONDS CMD...: run CMD every second until it succeeds.
wait_for() {
    local t="$1"; shift
    for _ in $(seq 1 "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    "$@" >/dev/null 2>&1
}

# Refuse before installing or starting anything.
for f in "$CONF" "$DBD_CONF"; do
    ours "$f" || die "$f exists and was not written by this script (no line '$HEADER'); not overwriting it. Move it away, or use a machine without a Slurm configuration."
done

# ---------------------------------------------------------------- packages
PACKAGES=(slurm-wlm munge)
BINS=(/usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/bin/srun /usr/sbin/munged /usr/bin/munge)
if [ "$ACCOUNTING" = 1 ]; then
    PACKAGES+=(slurmdbd mariadb-server)
    BINS+=(/usr/sbin/slurmdbd /usr/sbin/mariadbd /usr/bin/mariadb-install-db /usr/bin/sacctmgr)
fi
missing=()
for bin in "${BINS[@]}"; do [ -x "$bin" ] || missing+=("$bin"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "missing ${missing[*]}: apt-get install ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when the lists do not know the packages or are stale.
    if ! apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1 \
        || ! apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
        say "apt-get update"
        apt-get update
        apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    fi
else
    say "${PACKAGES[*]} already installed (slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo '?'))"
fi

# ---------------------------------------------------------------- dirs
mkdir -p "$STATE_ROOT"/{run,log,state,spool,jobs}
chmod 755 "$STATE_ROOT"
RUN="$STATE_ROOT/run"; LOG="$STATE_ROOT/log"; JOBS="$STATE_ROOT/jobs"
NEW_CONF="$(mktemp)"; NEW_DBD_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF" "$NEW_DBD_CONF"' EXIT

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown -R munge:munge /etc/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
chmod 700 /var/log/munge /var/lib/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if alive /run/munge/munged.pid munged && munge_ok; then
    say "munged already running (pid $(cat /run/munge/munged.pid))"
else
    say "starting munged (log /var/log/munge/munged.log)"
    rm -f /run/munge/munged.pid
    # munged refuses to run as root without --force: run it as the munge user.
    setsid runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
        </dev/null >>"$LOG/munged.out" 2>&1
    wait_for 20 munge_ok || die "munge credential round trip failed; see /var/log/munge/munged.log"
    say "munged up (pid $(cat /run/munge/munged.pid))"
fi
cp /run/munge/munged.pid "$RUN/munged.pid"

# ---------------------------------------------------------------- slurm.conf
# The measured node size: slurmd drains a node whose configuration exceeds it.
read -r HW_CPUS HW_MEM < <(slurmd -C | awk '
    /^NodeName=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["RealMemory"] }')
[ -n "${HW_CPUS:-}" ] && [ -n "${HW_MEM:-}" ] || die "could not read the node size from 'slurmd -C'"
CPUS="${ELASTIC_SLURM_CPUS:-$HW_CPUS}"
MEM="${ELASTIC_SLURM_MEM_MB:-$(( HW_MEM > 1024 ? HW_MEM - 512 : HW_MEM ))}"
SLURMD_PARAMS=""
if [ "$CPUS" -gt "$HW_CPUS" ] || [ "$MEM" -gt "$HW_MEM" ]; then
    SLURMD_PARAMS="SlurmdParameters=config_overrides"
fi
if [ "$ACCOUNTING" = 1 ]; then
    ACCOUNTING_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
    ACCOUNTING_LINES="AccountingStorageType=accounting_storage/none"
fi

cat >"$NEW_CONF" <<EOF
$HEADER
# Single-node cluster for elastic's Slurm tests: $NODE, $CPUS CPUs, $MEM MB.
# Daemons run as root, without systemd or cgroups.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCOUNTING_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs without --mem get 1 GB per CPU rather than the whole node.
DefMemPerCPU=1024
ReturnToService=2
MaxArraySize=10001
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
StateSaveLocation=$STATE_ROOT/state
SlurmdSpoolDir=$STATE_ROOT/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$SLURMD_PARAMS
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- accounting
DBD_CHANGED=0
if [ "$ACCOUNTING" = 1 ]; then
    DB="$STATE_ROOT/db"
    SOCK="$DB/mysqld.sock"
    mkdir -p "$DB"
    chown mysql:mysql "$DB"
    if [ ! -d "$DB/data/mysql" ]; then
        say "initialising a private MariaDB in $DB/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $LOG/mariadb-install.log"
    fi
    db_ok() { mariadb-admin --no-defaults -S "$SOCK" -u root ping; }
    if alive "$DB/mariadbd.pid" mariadbd && db_ok >/dev/null 2>&1; then
        say "mariadbd already running (pid $(cat "$DB/mariadbd.pid"))"
    else
        say "starting mariadbd on 127.0.0.1:$DB_PORT (log $DB/mariadb.log)"
        rm -f "$SOCK"
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB/data" \
            --socket="$SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --pid-file="$DB/mariadbd.pid" --log-error="$DB/mariadb.log" \
            --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOG/mariadbd.out" 2>&1 &
        wait_for "$TIMEOUT" db_ok || die "mariadbd does not answer; see $DB/mariadb.log"
        wait_for 10 test -s "$DB/mariadbd.pid" || true
        say "mariadbd up (pid $(cat "$DB/mariadbd.pid" 2>/dev/null || echo '?'))"
    fi
    # A random password for the local database user, kept across runs.
    [ -s "$DB/password" ] || (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DB/password")
    DB_PASS="$(cat "$DB/password")"
    mariadb --no-defaults -S "$SOCK" -u root -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || die "could not create the slurm database and user"

    cat >"$NEW_DBD_CONF" <<EOF
$HEADER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    install_conf "$NEW_DBD_CONF" "$DBD_CONF" 600 && DBD_CHANGED=1
    if [ "$DBD_CHANGED" = 1 ]; then stop_pid "$RUN/slurmdbd.pid" slurmdbd; fi
    if alive "$RUN/slurmdbd.pid" slurmdbd; then
        say "slurmdbd already running (pid $(cat "$RUN/slurmdbd.pid"))"
    else
        say "starting slurmdbd (log $LOG/slurmdbd.log)"
        setsid /usr/sbin/slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1 \
            || die "slurmdbd failed to start; see $LOG/slurmdbd.log"
    fi
fi

CONF_CHANGED=0
install_conf "$NEW_CONF" "$CONF" 644 && CONF_CHANGED=1

if [ "$ACCOUNTING" = 1 ]; then
    # sacctmgr reads slurm.conf (accounting_storage/slurmdbd), then asks slurmdbd.
    wait_for "$TIMEOUT" sacctmgr -n -P list cluster format=cluster \
        || die "slurmdbd does not answer; see $LOG/slurmdbd.log"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        say "registering cluster '$CLUSTER' with slurmdbd"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    say "slurmdbd up (pid $(cat "$RUN/slurmdbd.pid"))"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
if [ "$CONF_CHANGED" = 1 ]; then
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
fi
if alive "$RUN/slurmctld.pid" slurmctld; then
    say "slurmctld already running (pid $(cat "$RUN/slurmctld.pid"))"
else
    say "starting slurmctld (log $LOG/slurmctld.log)"
    # -i: ignore saved state that a changed configuration cannot read.
    setsid /usr/sbin/slurmctld -i -f "$CONF" </dev/null >>"$LOG/slurmctld.out" 2>&1 \
        || die "slurmctld failed to start; see $LOG/slurmctld.log"
fi
ctld_ok() { scontrol ping | grep -q 'is UP'; }
wait_for "$TIMEOUT" ctld_ok || die "slurmctld does not answer; see $LOG/slurmctld.log"
say "slurmctld up (pid $(cat "$RUN/slurmctld.pid"))"

if alive "$RUN/slurmd.pid" slurmd; then
    say "slurmd already running (pid $(cat "$RUN/slurmd.pid"))"
else
    say "starting slurmd (log $LOG/slurmd.log)"
    setsid /usr/sbin/slurmd -f "$CONF" </dev/null >>"$LOG/slurmd.out" 2>&1 \
        || die "slurmd failed to start; see $LOG/slurmd.log"
fi

# ---------------------------------------------------------------- node idle
t0=$SECONDS
state=""
while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
    state="$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) scontrol show node "$NODE" >&2 || true
       die "node $NODE is '$state' after ${TIMEOUT}s; see $LOG/slurmd.log and $LOG/slurmctld.log" ;;
esac
say "node $NODE is $state after $((SECONDS - t0))s"
sinfo

# ---------------------------------------------------------------- checks
# wait_job ID: prints the final state(s); 0 when the job (every array task) COMPLETED.
wait_job() {
    local id="$1" t=$SECONDS states=""
    while [ $((SECONDS - t)) -lt "$TIMEOUT" ]; do
        states="$(scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sort -u | tr '\n' ' ')"
        case "$states" in
            "COMPLETED ") echo COMPLETED; return 0 ;;
            *PENDING*|*RUNNING*|*CONFIGURING*|*COMPLETING*|"") ;;
            *) echo "$states"; return 1 ;;
        esac
        sleep 1
    done
    echo "TIMEOUT($states)"; return 1
}

if [ "${ELASTIC_SLURM_SKIP_CHECKS:-0}" != 1 ]; then
    say "check 1: srun -N1 -n1 hostname"
    out="$(timeout "$TIMEOUT" srun -N1 -n1 -p "$PARTITION" hostname)" || die "srun failed"
    [ "$out" = "$NODE" ] || die "srun printed '$out', expected '$NODE'"
    say "  -> $out"

    say "check 2: sbatch --mem=2G --cpus-per-task=1 --time=5 --wrap ..."
    id="$(sbatch --parsable -p "$PARTITION" --mem=2G --cpus-per-task=1 --time=5 \
        -J elastic-check -o "$JOBS/check-%j.out" \
        --wrap 'echo "job $SLURM_JOB_ID on $(hostname -s) as $(id -un) cpus=$SLURM_CPUS_PER_TASK mem=${SLURM_MEM_PER_NODE}M"')"
    st="$(wait_job "$id")" || die "sbatch job $id ended $st; see $JOBS/check-$id.out"
    say "  -> job $id $st: $(cat "$JOBS/check-$id.out")"

    say "check 3: sbatch --array=0-3 --mem=1G --cpus-per-task=1 --time=5 --wrap ..."
    id="$(sbatch --parsable -p "$PARTITION" --array=0-3 --mem=1G --cpus-per-task=1 --time=5 \
        -J elastic-array -o "$JOBS/array-%A_%a.out" \
        --wrap 'echo "task $SLURM_ARRAY_TASK_ID of array $SLURM_ARRAY_JOB_ID"')"
    st="$(wait_job "$id")" || die "array job $id ended $st"
    say "  -> array $id $st: $(cat "$JOBS"/array-"$id"_*.out | tr '\n' ';')"

    if [ "$ACCOUNTING" = 1 ]; then
        say "check 4: sacct -X -j $id"
        n_done() { [ "$(sacct -n -P -X -j "$id" -o State 2>/dev/null | grep -c '^COMPLETED$')" -ge 4 ]; }
        wait_for 30 n_done || die "sacct does not report the 4 array tasks COMPLETED: $(sacct -n -P -X -j "$id" -o JobID,State 2>&1 | tr '\n' ' ')"
        say "  -> $(sacct -n -P -X -j "$id" -o JobID,State | tr '\n' ' ')"
    fi
fi

say "cluster up: $(sinfo --version), node $NODE ($CPUS CPUs, $MEM MB), partition $PARTITION (default), accounting $([ "$ACCOUNTING" = 1 ] && echo slurmdbd || echo none)"
say "config $CONF; logs $LOG; stop with benchmarks/slurm/stop_cluster.sh"
