#!/usr/bin/env bash
# Run N copies of one command on this machine as ONE multi-process JAX job on CPU: how
# multi-host code is run and tested without a cluster.
#
#   launch/local.sh --processes 2 [--devices-per-process 4] [--timeout 600] [--dry-run] \
#       -- .venv/bin/lopd sft --config.train.steps=3 --config.workdir=runs/mp
#
# Each process gets D fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=D),
# CPU collectives over gloo, and LOPD_COORDINATOR (127.0.0.1 on a free port),
# LOPD_NUM_PROCESSES and LOPD_PROCESS_ID, which lopd_jax.parallel.mesh.maybe_initialize_distributed
# passes to jax.distributed.initialize (cluster auto-detection off; LOPD_DISTRIBUTED_TIMEOUT
# seconds to join, default 60). Output lines are prefixed with [pI]. When a process fails the
# others are stopped and the exit status is the first failure's (124 after --timeout seconds).
# --dry-run (or LOPD_DRY_RUN=1) prints the command of every process instead of running it.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
processes="" devices=4 timeout=0 dry_run="${LOPD_DRY_RUN:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes="${2:-}"; shift 2 ;;
    --processes=*) processes="${1#*=}"; shift ;;
    --devices-per-process) devices="${2:-}"; shift 2 ;;
    --devices-per-process=*) devices="${1#*=}"; shift ;;
    --timeout) timeout="${2:-}"; shift 2 ;;
    --timeout=*) timeout="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "local.sh: unknown option $1 (the command goes after --)" >&2; usage ;;
  esac
done
for value in "$processes" "$devices"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: --processes and --devices-per-process must be positive integers" >&2; usage; }
done
[[ "$timeout" =~ ^[0-9]+$ ]] || { echo "local.sh: --timeout must be a whole number of seconds" >&2; usage; }
[[ $# -gt 0 ]] || { echo "local.sh: no command after --" >&2; usage; }

port="${LOPD_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
# Our device count replaces any the caller's XLA_FLAGS carry (e.g. a test runner's 8).
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")"
xla_flags="$(echo $xla_flags --xla_force_host_platform_device_count="$devices")"

process_env() {  # the environment of process $1, as env(1) arguments
  printf '%s\n' JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
    "XLA_FLAGS=$xla_flags" PYTHONUNBUFFERED=1 \
    "LOPD_COORDINATOR=127.0.0.1:$port" "LOPD_NUM_PROCESSES=$processes" "LOPD_PROCESS_ID=$1" \
    "LOPD_DISTRIBUTED_TIMEOUT=${LOPD_DISTRIBUTED_TIMEOUT:-60}"
}

if [[ "$dry_run" == 1 ]]; then
  for ((i = 0; i < processes; i++)); do
    mapfile -t env_args < <(process_env "$i")
    printf '%q ' env "${env_args[@]}" "$@"
    echo
  done
  exit 0
fi

pids=()
live_members() {  # succeeds while a process of one of our groups still runs (zombies aside)
  ps -e -o pgid=,stat= | awk -v groups=" ${pids[*]} " \
    'index(groups, " " $1 " ") && $2 !~ /^Z/ {found = 1} END {exit !found}'
}
stop_all() {  # TERM every process group, then KILL what is left after 5 s.
  local pid
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    live_members || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
watchdog=""
finish() {
  set +e
  trap '' INT TERM USR1
  stop_all
  [[ -n "$watchdog" ]] && kill -- "-$watchdog" 2>/dev/null
  wait 2>/dev/null
  exit "$1"
}
trap 'echo "local.sh: interrupted; stopping all processes" >&2; finish 130' INT
trap 'echo "local.sh: timed out after ${timeout}s; stopping all processes" >&2; finish 124' USR1
trap 'finish 143' TERM

for ((i = 0; i < processes; i++)); do
  mapfile -t env_args < <(process_env "$i")
  # Its own session (process group), so stopping it also stops whatever it started.
  setsid bash -c 'prefix="$1"; shift; "$@" 2>&1 | sed -u "s/^/$prefix /"; exit "${PIPESTATUS[0]}"' \
    _ "[p$i]" env "${env_args[@]}" "$@" &
  pids+=("$!")
done
if [[ "$timeout" -gt 0 ]]; then
  # Its own group, killed whole at the end, and off our stdout: a leftover sleep holding the
  # output pipe would keep a caller reading it waiting until the timeout.
  setsid bash -c 'sleep "$1" && kill -USR1 "$2"' _ "$timeout" $$ </dev/null >/dev/null 2>&1 &
  watchdog=$!
fi

status=0
declare -A running
for i in "${!pids[@]}"; do running[${pids[$i]}]=$i; done
while [[ ${#running[@]} -gt 0 ]]; do
  if wait -n -p done_pid "${!running[@]}"; then rc=0; else rc=$?; fi
  i="${running[$done_pid]}"
  unset "running[$done_pid]"
  if [[ $rc != 0 ]]; then
    echo "local.sh: process $i exited with status $rc; stopping the others" >&2
    status=$rc
    break
  fi
done
finish "$status"
