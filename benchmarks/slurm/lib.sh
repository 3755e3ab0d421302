# Shared by start_cluster.sh and stop_cluster.sh (sourced, not run).

# alive PIDFILE COMM: the pid file names a live process whose command is COMM.
alive() {
    local pidfile="$1" comm="$2" pid
    [ -s "$pidfile" ] || return 1
    pid="$(cat "$pidfile")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$comm" ]
}
