"""`lopd demo`'s plan (`plan`) and report (`report`); the stage is `lopd_jax.stages.demo`."""
