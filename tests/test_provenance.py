"""The provenance record: fixed keys, one reader, and the manifests of earlier versions."""

import pytest

from lopd_jax import artifacts, provenance
from lopd_jax.models import ref
from lopd_jax.provenance import Provenance


def test_record_round_trips_with_fixed_keys():
    record = Provenance(sft_teacher="model:a", opd_teacher="model:b", sampled_by="model:s",
                        tokenizer="tok")  # fmt: skip
    fields = record.fields()
    assert list(fields) == ["provenance"] and tuple(fields["provenance"]) == provenance.KEYS
    assert provenance.read({"kind": "opd_checkpoint", **fields}) == record


def test_a_record_with_other_keys_is_refused():
    with pytest.raises(artifacts.ArtifactError, match="does not have the keys"):
        provenance.read({"provenance": {"teacher": "model:a"}})


@pytest.mark.parametrize(
    ("manifest", "want"),
    [  # what each kind's `teacher` meant before the record
        ({"kind": "sft_data", "teacher": "model:t", "tokenizer": "tok"},
         Provenance(sft_teacher="model:t", sampled_by="model:t", tokenizer="tok")),
        ({"kind": "sft_checkpoint", "teacher": "model:t", "tokenizer": "tok"},
         Provenance(sft_teacher="model:t", tokenizer="tok")),
        ({"kind": "opd_checkpoint", "teacher": "model:o", "sft_teacher": "model:t"},
         Provenance(sft_teacher="model:t", opd_teacher="model:o")),
        ({"kind": "rollouts", "sft_teacher": "model:t", "tokenizer": "tok",
          "sft_checkpoint": {"identity": "model:s", "path": "/x"}},
         Provenance(sft_teacher="model:t", sampled_by="model:s", tokenizer="tok")),
        ({"kind": "hf_export", "teacher": "model:t"}, Provenance(sft_teacher="model:t")),
    ],
)  # fmt: skip
def test_earlier_manifests_are_read_by_their_kind(manifest, want):
    assert provenance.read(manifest) == want


def test_sft_teacher_of_an_opd_checkpoint_is_its_sft_teacher(tmp_path):
    """`ModelRef.sft_teacher` once returned an OPD checkpoint's OPD teacher."""
    for manifest in (
        Provenance(sft_teacher="model:sft", opd_teacher="model:opd").fields(),
        {"teacher": "model:opd", "sft_teacher": "model:sft"},  # as written before the record
    ):
        model = ref.ModelRef(tmp_path, None, "model:x", 1, {"kind": "opd_checkpoint", **manifest})
        assert model.sft_teacher == "model:sft"
