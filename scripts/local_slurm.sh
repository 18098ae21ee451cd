#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests and for trying the cluster
# commands of docs/running.md without a cluster: slurmctld and slurmd on
# localhost with this machine's CPUs, no accounting, authenticated by a munge
# daemon of its own. Everything it writes is under DIR; nothing in /etc is
# changed.
#
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#   eval "$(scripts/local_slurm.sh start /tmp/slurm)"   # exports SLURM_CONF
#   sinfo; sbatch ...; srun -n 2 ...
#   scripts/local_slurm.sh stop /tmp/slurm
#
# `make slurm` starts it in /tmp/icckd_slurm. `start` waits until sinfo shows
# the node idle and prints the line that points the SLURM commands at it; it
# exits 1 with the daemons' log where they do not start. Environment:
# SLURM_PORT (slurmctld's port, default 6817; slurmd takes the next one) and
# SLURM_CPUS (default: this machine's count).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

stop() {
  # Its jobs first: their steps would outlive slurmd.
  if [ -f "$dir/slurmctld.pid" ]; then
    SLURM_CONF=$dir/slurm.conf scancel --user="$(id -un)" 2>/dev/null || true
  fi
  for name in slurmd slurmctld munged; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

start() {
  for cmd in slurmctld slurmd sinfo munged; do
    command -v "$cmd" >/dev/null || {
      echo "$cmd not found: apt-get install -y slurmctld slurmd slurm-client munge" >&2
      exit 1
    }
  done
  local port=${SLURM_PORT:-6817} cpus=${SLURM_CPUS:-$(nproc)}
  local host
  host=$(hostname -s)
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"
  if [ ! -f "$dir/munge/munge.key" ]; then
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
  fi
  cat > "$dir/slurm.conf" <<CONF
ClusterName=icckd
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$(id -un)
AuthType=auth/munge
# cred_expire: how long a requeued job waits before it may start again
# (SLURM's default, 120 s, would slow the requeue test).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  stop
  munged --force --key-file="$dir/munge/munge.key" \
    --socket="$dir/munge/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
  slurmctld -i
  slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "the local SLURM did not come up; its logs:" >&2
  tail -n 20 "$dir"/*.log >&2 || true
  stop
  exit 1
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
