"""Where a run's arrays live: the device mesh a config asks for, and joining a multi-process
(multi-host) run through JAX's own runtime (``jax.distributed``). The meshes and the placement
themselves are ``embedlab.core.meshes``', which sees no config."""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import Mesh

from embedlab.core import meshes

CLUSTER_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "TPU_WORKER_HOSTNAMES")


def cluster_detected(environ) -> str | None:
  """The environment variable that shows a multi-process launch, or None."""
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if (environ.get(name) or "1").strip().isdigit() and int(environ.get(name) or 1) > 1:
      return name
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU_WORKER_HOSTNAMES"
  return None


def initialize_distributed(mesh_cfg: Any, environ: Any = None) -> bool:
  """Calls ``jax.distributed.initialize`` when ``mesh_cfg`` (a ``config.MeshConfig``) asks.

  ``mesh.distributed="auto"`` initializes when ``mesh.coordinator_address`` is set or the
  environment shows a multi-process launch (``JAX_COORDINATOR_ADDRESS``, SLURM with more than
  one task, Open MPI, a multi-host TPU slice); JAX then reads the rest from the environment.
  ``"on"`` always initializes, ``"off"`` never. Call it at the program's entry point, before
  any other JAX call (``embedlab train`` does).

  Returns:
    True if this call initialized the distributed runtime (False: not asked, or done already).

  Example:
    >>> from embedlab.config import MeshConfig
    >>> from embedlab.core import meshes
    >>> initialize_distributed(MeshConfig(distributed="off"))
    False
  """
  import os  # noqa: PLC0415
  environ = os.environ if environ is None else environ
  mode = mesh_cfg.distributed
  if mode == "off" or (mode == "auto" and not mesh_cfg.coordinator_address
                       and not cluster_detected(environ)):
    return False
  from jax._src import distributed as _distributed  # noqa: PLC0415 - "already initialized?"
  if getattr(_distributed.global_state, "client", None) is not None:
    return False
  kwargs = {}
  if mesh_cfg.coordinator_address:
    kwargs["coordinator_address"] = mesh_cfg.coordinator_address
  if mesh_cfg.num_processes:
    kwargs["num_processes"] = mesh_cfg.num_processes
  if mesh_cfg.process_id >= 0:
    kwargs["process_id"] = mesh_cfg.process_id
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise RuntimeError(
        f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
        f"failed: {e}. Outside a detected cluster (SLURM, Open MPI, TPU pod) set "
        f"mesh.coordinator_address=HOST:PORT, mesh.num_processes and mesh.process_id on every "
        f"process, or --set mesh.distributed=off for a single process.") from e
  return True


def mesh_from_config(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> Mesh | None:
  """The mesh a run uses, or None when it runs on one device in one process (unsharded).

  Args:
    mesh_cfg: a ``config.MeshConfig``.
    devices: default ``jax.devices()`` (all devices of all processes).

  Example:
    >>> from embedlab.config import MeshConfig
    >>> from embedlab.core import meshes
    >>> mesh_from_config(MeshConfig()) is None  # one CPU device
    True
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, model = mesh_cfg.data, mesh_cfg.model
  if (n % model if data == 0 else data * model != n):
    divisors = [m for m in range(1, n + 1) if n % m == 0]
    fit = model if n % model == 0 else 1
    raise ValueError(f"mesh: data={data or 'auto'} x model={model} does not match the {n} "
                     f"device(s) available ({meshes.describe_devices(devices)}); mesh.data x mesh.model must "
                     f"be {n}, with mesh.model one of {divisors} (mesh.data=0 takes the rest), "
                     f"e.g. --set mesh.data={n // fit} --set mesh.model={fit}. To simulate N "
                     f"CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                     f"before JAX starts.")
  if n == 1 and jax.process_count() == 1:
    return None
  return meshes.make_mesh(data, model, devices)
