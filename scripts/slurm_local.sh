#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the scheduler tests (issue 26) and for trying
# `hydra/launcher=slurm_local` without a real cluster.
#
#   scripts/slurm_local.sh start    # install slurm-wlm + munge if missing, start munged, slurmctld, slurmd
#   eval "$(scripts/slurm_local.sh env)"   # export SLURM_CONF so that sbatch, sinfo, submitit find the cluster
#   scripts/slurm_local.sh status   # the daemons' pids and the node's state; exit 1 when not running
#   scripts/slurm_local.sh stop     # stop exactly the processes start launched (their pids are recorded)
#
# Everything (slurm.conf, munge key and socket, state, spool, logs, pids) lives under
# ${RKUPRUNE_SLURM_DIR:-/tmp/rkuprune-slurm}; nothing under /etc is written and no system service is used.
# A second start reuses a running cluster. Ports: ${RKUPRUNE_SLURM_PORT:-6817} (slurmctld) and the next one (slurmd).
#
# Known gap (issue 26, not yet closed): without slurmdbd, `sacct` says "accounting storage is disabled";
# `sacct -c` reads jobcomp.txt but names array tasks by their own job ids (3, not 2_0), so submitit's
# watcher, which calls plain `sacct -j <array id>`, cannot see a job that died without a result pickle
# (scancel, time-limit kill) and would wait forever. Next step: slurmdbd + mariadb under $DIR, or a tested shim.
set -euo pipefail

DIR=${RKUPRUNE_SLURM_DIR:-/tmp/rkuprune-slurm}
PORT=${RKUPRUNE_SLURM_PORT:-6817}
CONF="$DIR/slurm.conf"
PIDS="$DIR/pids"
DAEMONS=(munged slurmctld slurmd)
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "slurm_local: $*" >&2; }

# pid of a daemon this script started, if it is still that daemon
live_pid() {
    local name=$1 pid
    [[ -f $PIDS ]] || return 1
    pid=$(awk -v n="$name" '$1 == n {print $2}' "$PIDS")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$name" \
        && echo "$pid"
}

all_running() {
    local name
    for name in "${DAEMONS[@]}"; do live_pid "$name" >/dev/null || return 1; done
    SLURM_CONF=$CONF sinfo -h >/dev/null 2>&1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            say "slurm-wlm and munge are not installed and this user cannot install them (not root, no sudo):" \
                "run 'sudo apt-get install slurm-wlm munge' first"
            exit 3
        fi
    fi
    if ! command -v apt-get >/dev/null; then
        say "slurm-wlm and munge are not installed and there is no apt-get: install SLURM (slurmctld, slurmd," \
            "sbatch) and munge with this system's package manager"
        exit 3
    fi
    say "installing slurm-wlm and munge (apt-get, about a minute)"
    "${sudo[@]}" apt-get update -q >"$DIR/apt.log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1; then
        say "apt-get install slurm-wlm munge failed: see $DIR/apt.log"
        exit 3
    fi
}

write_conf() {
    local host user node
    host=$(hostname -s)
    user=$(id -un)
    # CPUs, sockets, cores, threads and memory as slurmd itself detects them on this machine
    node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on $host, everything under $DIR.
ClusterName=rkuprune
SlurmctldHost=$host
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups: plain process tracking works in containers and without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: finished jobs are logged to a file, and sacct reads them from there
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# seconds between SIGTERM and SIGKILL (time limit, scancel, requeue)
KillWait=10
MinJobAge=600
$node State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &  # its own session: a Ctrl-C of the caller leaves it
    echo "$name $!" >>"$PIDS"
}

wait_idle() {
    local state="" i
    for i in $(seq 1 60); do
        state=$(SLURM_CONF=$CONF sinfo -h -N -o %t 2>/dev/null | head -1 || true)
        if [[ $state == idle || $state == mix || $state == alloc ]]; then
            return 0
        fi
        for name in "${DAEMONS[@]}"; do
            if ! live_pid "$name" >/dev/null; then
                say "$name exited while starting: see $DIR/log/$name.out and $DIR/log/*.log"
                return 1
            fi
        done
        sleep 0.5
    done
    say "the node is '${state:-unknown}', not idle, after 30 s: see $DIR/log/"
    return 1
}

start() {
    mkdir -p "$DIR"
    if all_running; then
        say "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    stop_daemons quiet
    install_packages
    mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool" "$DIR/log"
    chmod 700 "$DIR/munge"
    : >"$PIDS"
    write_conf
    if [[ ! -f $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$DIR/munge/munge.key"
    # --force: the folder sits under a world-writable /tmp, which munged would otherwise refuse
    start_daemon munged munged -F --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    for _ in $(seq 1 20); do [[ -S $DIR/munge/munge.socket ]] && break; sleep 0.25; done
    start_daemon slurmctld slurmctld -D -c -f "$CONF"
    start_daemon slurmd slurmd -D -f "$CONF"
    if ! wait_idle; then
        stop_daemons quiet
        exit 1
    fi
    say "running: node $(hostname -s), partition cpu (SLURM_CONF=$CONF)"
}

stop_daemons() {
    local quiet=${1:-} name pid i
    [[ -f $PIDS ]] || { [[ -n $quiet ]] || say "not running (no $PIDS)"; return 0; }
    for name in slurmd slurmctld munged; do  # clients first, munged last
        pid=$(live_pid "$name") || continue
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        [[ -n $quiet ]] || say "stopped $name (pid $pid)"
    done
    rm -f "$PIDS"
}

status() {
    local name pid ok=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(live_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            ok=1
        fi
    done
    if [[ $ok == 0 ]]; then
        SLURM_CONF=$CONF sinfo -N -o "%N %P %t %c %m" || ok=1
        echo "SLURM_CONF=$CONF"
    fi
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemons ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2
        exit 2
        ;;
esac
