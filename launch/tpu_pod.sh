#!/usr/bin/env bash
# Run one lopd stage on every worker of a Cloud TPU pod slice (multi-host).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [--setup] -- lopd sft --config=configs/sft_qwen3_8b.py ...
#
# --setup copies this checkout to every worker and installs it (jax[tpu] on top of the pinned
# requirements). Each worker runs the same command; jax.distributed joins them into one job
# (LOPD_DISTRIBUTED=1) and the mesh spans all chips. Paths (models, data, run dirs) must be
# visible to every worker: gs:// buckets or a shared filesystem.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,9p' "$0"; exit 2
fi
TPU="$1"; ZONE="$2"; shift 2
SETUP=0
if [[ "${1:-}" == "--setup" ]]; then SETUP=1; shift; fi
[[ "${1:-}" == "--" ]] && shift
REMOTE_DIR="${LOPD_REMOTE_DIR:-lopd_jax}"
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"; }

if [[ $SETUP == 1 ]]; then
  tar czf /tmp/lopd_jax_src.tgz --exclude=.venv --exclude=runs --exclude=.git .
  gcloud compute tpus tpu-vm scp /tmp/lopd_jax_src.tgz "$TPU":/tmp/ --zone "$ZONE" --worker=all
  ssh_all "mkdir -p $REMOTE_DIR && tar xzf /tmp/lopd_jax_src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR \
    && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
    && .venv/bin/pip install -q -r launch/requirements-tpu.txt && .venv/bin/pip install -q --no-deps -e ."
fi
CMD="$*"
ssh_all "cd $REMOTE_DIR && LOPD_DISTRIBUTED=1 .venv/bin/$CMD"
