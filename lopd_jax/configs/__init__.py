"""Default configs of every stage (`lopd <stage>` uses `lopd_jax/configs/<stage>.py`).

They ship with the package, so `--config=<name>` works from any install; `--config` also
takes a file path (e.g. the paper's configs in the repository's `configs/`). Every stage builds
its shared sections (`model`, `mesh`, `optimizer`, `checkpoint`, `train`) with `sections`.
"""
