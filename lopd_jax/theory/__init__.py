"""Exact tabular laboratory for OPD gradient bias (method.md, "The theory").

Every sequence of a tiny autoregressive space is enumerated, so KL, chi-square, the online and
offline surrogate gradients, `Cov_ref[w, f]` and the bound constants are exact sums, and OPD
trajectories (online, population offline, Lightning's fixed buffer, top-k reverse KL) are cheap
jitted scans. Run under `jax.enable_x64(True)` for float64 exactness.
"""

from lopd_jax.theory.exact import (
    GradientReport,
    advantage_nt,
    chi2,
    gradient_report,
    kl,
    per_sequence_f,
    score_norm_max,
    surrogate_grad,
)
from lopd_jax.theory.setting import checksum_teacher, is_correct_n, p_correct, sft
from lopd_jax.theory.space import (
    Family,
    Space,
    sample_weights,
    seq_logp_n,
    token_logq_nt,
)
from lopd_jax.theory.train import (
    Method,
    Objective,
    Track,
    buffer_occupancy_s,
    buffer_sampled_sv,
    topk_reverse_kl,
    track,
    train,
    unsampled_mass,
)

__all__ = [
    "Family",
    "GradientReport",
    "Method",
    "Objective",
    "Space",
    "Track",
    "advantage_nt",
    "buffer_occupancy_s",
    "buffer_sampled_sv",
    "checksum_teacher",
    "chi2",
    "gradient_report",
    "is_correct_n",
    "kl",
    "p_correct",
    "per_sequence_f",
    "sample_weights",
    "score_norm_max",
    "seq_logp_n",
    "sft",
    "surrogate_grad",
    "token_logq_nt",
    "topk_reverse_kl",
    "track",
    "train",
    "unsampled_mass",
]
