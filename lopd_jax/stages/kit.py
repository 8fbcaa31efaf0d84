"""The stage runtime: every stage is `start` -> `load` -> `claim` -> its work -> `report`.

    RULES = kit.Rules("rollout", positive=("n", ...), required={"model.path": "..."}, mesh="local")

    def run(config):
        mesh = kit.start(config, RULES)          # every value checked; nothing loaded or made
        model, model_config, params = kit.load(config.model, mesh)
        claim = kit.claim(config.output, "rollouts", identity, **record)
        ...                                      # the stage's own work
        return kit.report("rollout", f"wrote {config.output}", summary)

`start` refuses a bad config before anything is read or written: another stage's config, any
shared section's value (`configs/sections.validate`) and the stage's own rules, declared once in
its `Rules`. `claim` is the one resume protocol: an output holding anything its stage did not
write is refused, and a resume is compared with the identity recorded by the run that made the
output: contents (model fingerprints), never paths, so a byte-identical copy of an input in
another directory is the same input. A stage claims only once its inputs are loaded, so a start
that fails never blocks the fixed rerun.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
from ml_collections import ConfigDict

from lopd_jax import artifacts, io
from lopd_jax.configs import sections
from lopd_jax.errors import ConfigError

# A range rule: (field, accepts(value), what it must be), e.g. ("top_p", lambda p: 0 < p <= 1,
# "in (0, 1]").
Range = tuple[str, Callable[[Any], bool], str]


@dataclasses.dataclass(frozen=True)
class Rules:
    """A stage's own config rules, declared once (the shared sections' are in `sections`)."""

    stage: str  # `lopd <stage>`: its shipped config is the reference for "another stage's"
    positive: tuple[str, ...] = ()  # sizes >= 1
    choices: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    ranges: tuple[Range, ...] = ()
    required: Mapping[str, str] = dataclasses.field(default_factory=dict)  # field -> what
    # The devices: "global" (all processes', one program), "local" (this process's: each
    # process works on its own share), or None (no mesh).
    mesh: str | None = None
    batch: str | None = None  # a batch size split over the mesh's data-parallel devices
    # The output directory, refused early when it is a file or holds what the stage did not
    # write: (field, the entry the stage creates first, entries allowed before it).
    output: tuple[str, str, tuple[str, ...]] | None = None
    check: Callable[[ConfigDict], None] | None = None  # rules across fields


def start(config: ConfigDict, rules: Rules):
    """Checks every config value, joins the multi-process job, and returns the stage's mesh
    (None for `mesh=None`). Reads and writes nothing."""
    shipped = importlib.import_module(f"lopd_jax.configs.{rules.stage.replace('-', '_')}")
    sections.check_stage_fields(config, shipped.get_config(), rules.stage)
    sections.validate(config)
    sections.require_positive(config, *rules.positive)
    for name, choices in rules.choices.items():
        sections.require_choice(config, name, choices)
    for name, ok, rule in rules.ranges:
        sections.require(config, name, ok, rule)
    for name, what in rules.required.items():
        sections.require_path(_value(config, name), name, what)
    if rules.check is not None:
        rules.check(config)
    if rules.output is not None:
        field, marker, allowed = rules.output
        _check_output(_value(config, field), field, marker, allowed)
    from lopd_jax.parallel import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed()
    if rules.mesh is None:
        return None
    devices = jax.local_devices() if rules.mesh == "local" else None
    mesh = mesh_lib.make_mesh(sections.mesh_config(config.mesh), devices=devices)
    if rules.batch is not None:
        _check_batch_split(config, rules.batch, mesh)
    return mesh


def _check_batch_split(config: ConfigDict, name: str, mesh) -> None:
    """A batch splits evenly over the mesh's data-parallel devices (and, for training, into
    `train.num_microbatches` on each)."""
    from lopd_jax.sampling.generate import data_parallel_size

    microbatches = config.train.num_microbatches if name == "train.batch_size" else 1
    split = microbatches * data_parallel_size(mesh)
    if (size := _value(config, name)) % split:
        per = f"{microbatches} microbatches over " if microbatches > 1 else ""
        raise ConfigError(
            f"{name}={size} does not split into {per}the mesh's {data_parallel_size(mesh)} "
            f"data-parallel devices (mesh.preset={config.mesh.preset!r}); make it a multiple "
            f"of {split}."
        )


def load(section: ConfigDict, mesh=None, *, path: str | None = None, params: bool = True):
    """A model section -> (ModelRef, its config in the section's numerics, params placed on
    `mesh`, or None without `params`). `path` overrides `section.path` (a teacher's)."""
    from lopd_jax.models import ref

    model = ref.resolve(section.path if path is None else path, sections.model_step(section))
    model_config = sections.model_config(section, model.config)
    return model, model_config, load_params(model, model_config, mesh) if params else None


def load_params(model, model_config, mesh=None):
    """`model`'s weights in `model_config`'s dtype, read straight into their shardings on
    `mesh` (`load(..., params=False)` and this: a stage that loads only when needed)."""
    from lopd_jax.parallel import rules

    shardings = rules.param_shardings(model_config, mesh) if mesh is not None else None
    return model.load(model_config.param_dtype, shardings)


@dataclasses.dataclass
class Claim:
    """An output claimed by this run (`resumed`: by an earlier run of the same identity)."""

    output: Any  # an epath
    record: Any  # the file holding the claim
    resumed: bool
    manifest: dict[str, Any]

    def release(self) -> None:
        """Gives up a claim this run took (it failed before committing any work), so the
        rerun with a value fixed starts afresh instead of being refused."""
        if not self.resumed and jax.process_index() == 0:
            self.record.unlink(missing_ok=True)


def claim(
    output: str | os.PathLike,
    kind: str,
    identity: Mapping[str, Any],
    *,
    field: str = "output",
    record: str = artifacts.MANIFEST,
    marker: str | None = None,
    allowed: tuple[str, ...] = (),
    committed: Callable[[], bool] | None = None,
    **fields: Any,
):
    """Claims `output` for a run of `kind` whose results are decided by `identity`; returns a
    `Claim` (a rollout store for kind "rollouts": the store keeps its claim in its manifest).

    A new or empty directory is claimed by writing `record` (the identity and `fields`); one
    whose `record` exists is resumed only if its identity is the same, else refused naming each
    field that differs; one holding anything else (no `marker`: the entry the stage creates
    first, default `record`; `allowed` entries aside) is refused. A claim under which nothing
    was `committed()` (a start that failed, even by kill -9) is replaced, not compared."""
    from lopd_jax.store import rollouts

    if kind == rollouts.KIND:
        return rollouts.RolloutStore.open_or_create(output, identity, **fields)
    directory = io.path(output)
    identity = json.loads(json.dumps(identity, default=str))  # as stored: tuples are lists
    from lopd_jax.parallel import mesh as mesh_lib

    _check_output(directory, field, marker or record, allowed)
    file = directory / record
    resumed = file.exists() and (committed is None or committed())
    # Every process has looked before process 0 writes (else another could see its temp file).
    mesh_lib.sync_processes(f"lopd {kind}: claim checked")
    if resumed:
        stored = artifacts.read_manifest(directory, kind, manifest_file=record)
        artifacts.check_same_identity(
            f"{field}={output}", f"a {kind} run", stored.get("identity", {}), identity,
            f"Use a new {field}, or rerun with the original values ({record} records them).",
        )  # fmt: skip
        return Claim(directory, file, True, stored)
    manifest = {"identity": identity, **fields}
    if jax.process_index() == 0:  # one writer; the others checked what was there
        manifest = artifacts.write_manifest(directory, kind, manifest_file=record, **manifest)
    mesh_lib.sync_processes(f"lopd {kind}: claimed")
    return Claim(directory, file, False, manifest)


def _value(config: ConfigDict, name: str) -> Any:
    """A field by its dotted name (`model.path`)."""
    return functools.reduce(lambda section, key: section[key], name.split("."), config)


def _check_output(output: Any, field: str, marker: str, allowed: tuple[str, ...]) -> None:
    if isinstance(output, str) and not output:
        return  # an empty path is a `required` field's business
    directory = io.path(output)
    if directory.is_file():
        raise artifacts.ArtifactError(f"{field}={output} is a file; set {field} to a directory.")
    artifacts.check_lopd_directory(directory, marker, field=field, allowed=allowed)


def report(
    stage: str, headline: str, summary: Mapping[str, Any], *, path: Any = None
) -> dict[str, Any]:
    """Prints the stage's summary and writes it as JSON to `path` (process 0); returns it:
    what the stage's `run` returns."""
    if jax.process_index() == 0:
        if path is not None:
            artifacts.atomic_write_text(path, json.dumps(summary, indent=2, default=str))
        print(f"{stage}: {headline}")
        width = max((len(k) for k in summary), default=0) + 2
        for key, value in summary.items():
            print(f"  {key:<{width}} {value}")
    return dict(summary)
