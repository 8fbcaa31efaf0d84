"""Config of `lopd study`: where does Lightning OPD match online OPD, for each loss?

The demo's toy (lopd_jax/configs/demo.py: its data sizes, eval and arm recipe) swept over the
OPD method ({lightning, online} x {sampled-token, top-k reverse KL}, plus Lightning with the
ratio-clipped sampled-token loss), the lr, the SFT student's quality (its SFT steps: one SFT
run to the largest, checkpointed at each), the sequences per update and the seed. Every arm
makes `opd_steps` updates and is evaluated on all held-out problems.

The default grid, 5 methods x 2 lrs x 2 qualities x 1 batch size x 2 seeds = 40 arms, takes
~1700 CPU seconds (measured): ~17 minutes on 2 idle CPU cores (SFT, 370 CPU s, runs alone).
Left out for time: batch size 64 (a batch-64 arm costs ~4x a batch-16 one: the full grid at
both sizes would be ~90 minutes), a third lr and seed, online ratio-clip (online's sampler is
the current student, so the ratio stays ~1 and it equals online sampled-token) and
`online.reuse_steps`. Add values on the command line, e.g. `--config.batch_sizes='(16, 64)'`
or `--config.seeds='(0, 1, 2)'`: finished arms are reused, and the outputs cover the new grid.
"""

from ml_collections import ConfigDict

from lopd_jax.configs import demo


def get_config() -> ConfigDict:
    c = demo.get_config()
    del c.grid, c.seeds, c.sft_steps  # teacher A only; seeds and SFT steps: axes below
    c.workdir = "runs/study"  # stages, study.json, study.md, differences.json, drift.png
    c.methods = (
        "lightning_sampled", "online_sampled", "lightning_topk", "online_topk",
        "lightning_ratio_clip",
    )  # fmt: skip
    c.lrs = (1e-5, 1e-4)
    c.sft_steps = (400, 1200)  # student quality: SFT checkpoints at these steps
    c.batch_sizes = (16,)  # sequences per update
    c.seeds = (0, 1)
    c.eval_every = 0  # final evaluation only (no curves)
    c.log_every = 10
    return c
