# Shared by the launchers (sourced): dry-run printing and the recommended GPU settings.

# `run CMD ARGS...` runs a command, or with LOPD_DRY_RUN=1 prints it, quoted so that pasting
# the line runs exactly it.
run() {
  if [[ "${LOPD_DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

# `quote ARGS...`: one shell-quoted string (for commands that travel through a remote shell).
quote() { printf '%q ' "$@" | sed 's/ $//'; }

# XLA on NVIDIA GPUs: overlap collectives with compute (latency-hiding scheduler, pipelined
# FSDP all-gathers / reduce-scatters), combine small collectives into large ones, and give
# collectives their own high-priority stream. Every flag exists in the pinned jaxlib (an
# unknown flag aborts jax at start-up; tests/launch/test_launchers.py checks them on CPU).
LOPD_GPU_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_highest_priority_async_stream=true \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728 \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864 \
--xla_gpu_enable_pipelined_all_gather=true \
--xla_gpu_enable_pipelined_reduce_scatter=true \
--xla_gpu_enable_pipelined_all_reduce=true \
--xla_gpu_enable_while_loop_double_buffering=true"
# XLA preallocates this fraction of each GPU's memory (the rest is left to cuDNN / NCCL).
LOPD_GPU_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
gpu_env() {  # env(1) arguments for a process that drives GPUs
  echo "XLA_FLAGS=$(echo ${XLA_FLAGS:-} $LOPD_GPU_XLA_FLAGS)"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$LOPD_GPU_MEM_FRACTION"
}
