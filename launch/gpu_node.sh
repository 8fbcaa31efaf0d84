#!/usr/bin/env bash
# Run one lopd stage on a GPU node (all local GPUs in one process), or on several nodes
# under SLURM (one process per node; jax.distributed reads the SLURM environment).
#
#   launch/gpu_node.sh [--setup] -- lopd opd --config=configs/... --config.mesh.preset=fsdp
#   srun --nodes=2 --ntasks-per-node=1 launch/gpu_node.sh -- lopd sft --config=...
#
# --setup installs the CUDA build of jax on top of the pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--setup" ]]; then
  shift
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt -r launch/requirements-gpu.txt
  .venv/bin/pip install -q --no-deps -e .
fi
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then sed -n '2,8p' "$0"; exit 2; fi
# Let XLA use most of the GPU memory up front; overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
[[ -n "${SLURM_NTASKS:-}" && "${SLURM_NTASKS}" -gt 1 ]] && export LOPD_DISTRIBUTED=1
exec .venv/bin/"$@"
