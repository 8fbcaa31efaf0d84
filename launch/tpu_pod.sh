#!/usr/bin/env bash
# Run one lopd stage on every worker of a Cloud TPU VM or pod slice (multi-host).
#
#   launch/tpu_pod.sh --name NAME --zone ZONE [--project P] [--create] [--queued]
#       [--accelerator-type v5litepod-16] [--runtime-version v2-alpha-tpuv5-lite] [--spot]
#       [--setup] [--after keep|stop|delete] [--log FILE] [--dry-run] -- lopd sft --config=...
#
# --create   create the TPU VM (or with --queued, a queued resource, waiting until it is ACTIVE)
#            unless one named NAME exists, which is then reused.
# --setup    copy this checkout to every worker and install it (.venv; jax[tpu] on top of the
#            pinned requirements).
# --after    what to do with the TPU when the stage ends, failed or not (default keep; stop
#            is for single-host TPU VMs; delete also deletes a queued resource).
# Every worker runs the same command (each argument quoted as given); jax.distributed joins
# them (LOPD_DISTRIBUTED=1) and the mesh spans all chips (mesh.preset=auto). The output of all
# workers streams here and to --log (default: a new file under $TMPDIR). Paths (models, data,
# run dirs) must be visible to every worker: gs:// buckets or a shared filesystem.
# --dry-run (or LOPD_DRY_RUN=1) prints the gcloud commands instead of running them.
# Runs where gcloud runs, macOS's bash 3.2 included.
set -euo pipefail
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/launch/common.sh"

name="" zone="" project="" create=0 queued=0 accelerator="" runtime="" spot=0 setup=0
after=keep log="" remote_dir="${LOPD_REMOTE_DIR:-lopd_jax}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="${2:-}"; shift 2 ;;
    --zone) zone="${2:-}"; shift 2 ;;
    --project) project="${2:-}"; shift 2 ;;
    --create) create=1; shift ;;
    --queued) queued=1; shift ;;
    --accelerator-type) accelerator="${2:-}"; shift 2 ;;
    --runtime-version) runtime="${2:-}"; shift 2 ;;
    --spot) spot=1; shift ;;
    --setup) setup=1; shift ;;
    --after) after="${2:-}"; shift 2 ;;
    --log) log="${2:-}"; shift 2 ;;
    --remote-dir) remote_dir="${2:-}"; shift 2 ;;
    --dry-run) export LOPD_DRY_RUN=1; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "tpu_pod.sh: unknown option $1 (the command goes after --)" >&2; usage ;;
  esac
done
fail() { echo "tpu_pod.sh: $*" >&2; exit 2; }
[[ -n "$name" && -n "$zone" ]] || fail "--name and --zone are required"
[[ $# -gt 0 ]] || fail "no command after -- (e.g. -- lopd sft --config=...)"
[[ "$after" =~ ^(keep|stop|delete)$ ]] || fail "--after must be keep, stop or delete, not '$after'"
if [[ $create == 1 && ( -z "$accelerator" || -z "$runtime" ) ]]; then
  fail "--create needs --accelerator-type and --runtime-version (e.g. v5litepod-16 and v2-alpha-tpuv5-lite)"
fi
[[ $queued == 1 && $after == stop ]] && fail "a queued resource cannot be stopped; use --after delete or keep"

where=(--zone "$zone")
[[ -n "$project" ]] && where+=(--project "$project")
tpu=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
dry() { [[ "${LOPD_DRY_RUN:-0}" == 1 ]]; }

if [[ $create == 1 ]]; then
  sizing=(--accelerator-type "$accelerator")
  [[ $spot == 1 ]] && sizing+=(--spot)
  if [[ $queued == 1 ]]; then
    # The describe fails when there is none yet (printed first in a dry run).
    if dry || ! "${qr[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
      run "${qr[@]}" create "$name" --node-id "$name" "${where[@]}" "${sizing[@]}" \
        --runtime-version "$runtime"
    fi
    state_cmd=("${qr[@]}" describe "$name" "${where[@]}" --format='value(state.state)')
    if dry; then
      run "${state_cmd[@]}"
    else
      until [[ "$("${state_cmd[@]}")" == ACTIVE ]]; do
        echo "tpu_pod.sh: waiting for queued resource $name to become ACTIVE" >&2
        sleep 30
      done
    fi
  elif dry || ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
    run "${tpu[@]}" create "$name" "${where[@]}" "${sizing[@]}" --version "$runtime"
  fi
fi

finish() {
  case "$after" in
    stop) run "${tpu[@]}" stop "$name" "${where[@]}" ;;
    delete)
      if [[ $queued == 1 ]]; then
        run "${qr[@]}" delete "$name" "${where[@]}" --force --quiet
      else
        run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
      fi ;;
  esac
}
trap finish EXIT

ssh_all() { run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$1"; }
remote_dir_q="$(quote "$remote_dir")"
if [[ $setup == 1 ]]; then
  # A fresh local temp file, and a remote one named after it: two launches never collide.
  mktemp_flags=()
  dry && mktemp_flags=(-u)  # a dry run only names it
  tarball="$(mktemp ${mktemp_flags[@]+"${mktemp_flags[@]}"} "${TMPDIR:-/tmp}/lopd_jax_src.XXXXXX")"
  remote_tarball="/tmp/$(basename "$tarball")"
  run tar czf "$tarball" --exclude=.venv --exclude=runs --exclude=.git -C "$root" .
  run "${tpu[@]}" scp "$tarball" "$name:$remote_tarball" "${where[@]}" --worker=all
  dry || rm -f "$tarball"
  ssh_all "mkdir -p $remote_dir_q && tar xzf $remote_tarball -C $remote_dir_q && rm -f $remote_tarball \
&& cd $remote_dir_q && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
&& .venv/bin/pip install -q -r launch/requirements-tpu.txt && .venv/bin/pip install -q --no-deps -e ."
fi

# Each argument quoted once here, so the remote shell gives the program exactly the words it
# was given (spaces, quotes and $ included).
remote_cmd="cd $remote_dir_q && LOPD_DISTRIBUTED=1 .venv/bin/$(quote "$@")"
if dry; then
  ssh_all "$remote_cmd"
else
  log="${log:-$(mktemp "${TMPDIR:-/tmp}/lopd_tpu_pod.XXXXXX")}"
  echo "tpu_pod.sh: streaming all workers' output to $log" >&2
  ssh_all "$remote_cmd" 2>&1 | tee "$log"
  exit "${PIPESTATUS[0]}"
fi
