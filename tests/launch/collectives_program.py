"""One process of a multi-process job (run by tests/launch/test_local.py under launch/local.sh).

Joins the job, gathers every process's (index, local device count), and sums a global array
whose rows live on different processes; prints the results for the test to check.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lopd_jax.parallel import mesh as mesh_lib

mesh_lib.maybe_initialize_distributed()
index = jax.process_index()
gathered = multihost_utils.process_allgather(np.array([index, jax.local_device_count()]))
mesh = mesh_lib.make_mesh()
rows_b2 = np.full((jax.local_device_count(), 2), index + 1, np.float32)
x_b2 = jax.make_array_from_process_local_data(NamedSharding(mesh, P(("data", "fsdp"))), rows_b2)
total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(x_b2)
print(
    f"process={index} count={jax.process_count()} devices={jax.device_count()} "
    f"gathered={gathered.tolist()} sum={float(total)}"
)
