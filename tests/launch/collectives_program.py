"""Run by tests/launch/test_local.py under launch/local.sh: one process of a multi-process job."""

import jax
import numpy as np
from jax.experimental import multihost_utils

from lopd_jax.parallel import mesh as mesh_lib

mesh_lib.maybe_initialize_distributed()
index, count = jax.process_index(), jax.process_count()
gathered = multihost_utils.process_allgather(np.array([index, jax.local_device_count()]))
mesh = mesh_lib.make_mesh()
# A global array whose rows live on different processes, reduced across all of them.
local = np.full((jax.local_device_count(), 2), index + 1, np.float32)
x = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp"))), local)
total = float(jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))(x))
print(f"process={index} count={count} devices={jax.device_count()} gathered={gathered.tolist()} sum={total}")
