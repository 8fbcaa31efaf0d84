"""Config of `lopd export`: any lopd checkpoint (SFT or OPD, any step) -> a HF directory."""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    # The checkpoint (model.path; model.step=-1 = its latest step). model.param_dtype is the
    # dtype the weights are written in ("bfloat16" halves the files; "float32" is exact).
    c.model = sections.model("runs/demo/opd/checkpoints")
    c.output = "runs/demo/export"  # the HF directory to write (refused if something else is there)
    return c
