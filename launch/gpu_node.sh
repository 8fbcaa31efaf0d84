#!/usr/bin/env bash
# Run one lopd stage on one GPU node: a single process drives all its GPUs.
#
#   launch/gpu_node.sh [--setup] [--dry-run] -- lopd opd --config=... --config.mesh.preset=auto
#
# --setup creates .venv and installs the CUDA build of jax on top of the pinned requirements.
# The process gets the recommended XLA flags (launch/common.sh) and preallocates
# XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9) of each GPU. mesh.preset=auto shards params
# over all GPUs of the node (FSDP). For several nodes use launch/slurm.sbatch.
# --dry-run (or LOPD_DRY_RUN=1) prints the commands instead of running them.
set -euo pipefail
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/launch/common.sh"
setup=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --setup) setup=1; shift ;;
    --dry-run) export LOPD_DRY_RUN=1; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "gpu_node.sh: unknown option $1 (the command goes after --)" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || { echo "gpu_node.sh: no command after --" >&2; usage; }

cd "$root"
if [[ $setup == 1 ]]; then
  run python3 -m venv .venv
  run .venv/bin/pip install -q -r requirements.txt -r launch/requirements-gpu.txt
  run .venv/bin/pip install -q --no-deps -e .
fi
mapfile -t env_args < <(gpu_env)
run env "${env_args[@]}" ".venv/bin/$1" "${@:2}"
