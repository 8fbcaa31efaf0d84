"""Provenance: which teachers, which sampler and which tokenizer stand behind an artifact.

One record with fixed keys, written into every manifest that carries one (SFT data, SFT and OPD
checkpoints, rollout stores, exports) as its `provenance` field and read back only here:

    sft_teacher   the teacher that wrote the SFT data the model was trained on
    opd_teacher   the teacher whose log-probs drove OPD (None: not distilled)
    sampled_by    the model that sampled the artifact's responses: the teacher for SFT data,
                  pi_ref for a rollout store and a Lightning OPD run (None: sampled on-policy
                  by the student itself, online OPD; or not sampled: an SFT checkpoint)
    tokenizer     the tokenizer's identity

Each value is an identity (`model:...`, `name:...`, a tokenizer name) or None (unknown). Before
this record, manifests said `teacher` with five meanings; `read` still reads those manifests
(their meaning per kind is fixed in `_legacy`), so earlier runs and stores keep working.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FIELD = "provenance"
KEYS = ("sft_teacher", "opd_teacher", "sampled_by", "tokenizer")


@dataclasses.dataclass(frozen=True)
class Provenance:
    sft_teacher: str | None = None
    opd_teacher: str | None = None
    sampled_by: str | None = None
    tokenizer: str | None = None

    def fields(self) -> dict[str, Any]:
        """What a manifest records: `**provenance.fields()`."""
        return {FIELD: dataclasses.asdict(self)}

    def replace(self, **changes: str | None) -> Provenance:
        return dataclasses.replace(self, **changes)


def read(manifest: dict[str, Any]) -> Provenance:
    """The provenance of a manifest (its record, or an earlier version's keys)."""
    if FIELD not in manifest:
        return _legacy(manifest)
    record = manifest[FIELD]
    if not isinstance(record, dict) or set(record) != set(KEYS):
        from lopd_jax.artifacts import ArtifactError

        raise ArtifactError(
            f"the manifest's provenance {record!r} does not have the keys {list(KEYS)}; it was "
            "edited or written by another program: re-run the stage that wrote it."
        )
    return Provenance(**record)


def _legacy(manifest: dict[str, Any]) -> Provenance:
    """The keys of manifests written before the record, by kind: `teacher` was the SFT
    teacher in SFT data, SFT checkpoints and exports and the OPD teacher in an OPD checkpoint
    (which said `sft_teacher` for the other); a store said `sft_teacher` and `sft_checkpoint`."""
    kind = manifest.get("kind")
    if kind == "opd_checkpoint":
        sft_teacher, opd_teacher = manifest.get("sft_teacher"), manifest.get("teacher")
    else:
        sft_teacher = manifest.get("sft_teacher", manifest.get("teacher"))
        opd_teacher = None
    if kind == "rollouts":
        sampled_by = (manifest.get("sft_checkpoint") or {}).get("identity")
    elif kind == "sft_data":
        sampled_by = sft_teacher
    else:
        sampled_by = None
    return Provenance(sft_teacher, opd_teacher, sampled_by, manifest.get("tokenizer"))
