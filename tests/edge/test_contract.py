"""The metadata document round-trips and every malformed field gets a one-line ModelError."""

from __future__ import annotations

import json

import pytest

from edge.contract import InputSpec, ModelMeta
from edge.errors import ModelError


def _meta() -> ModelMeta:
    return ModelMeta(name="nano-b", version="1.0", input=InputSpec(width=640, height=480), parameters=150_000)


def test_round_trip() -> None:
    meta = _meta()
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta
    assert again.priors.min_sizes == ((16, 32), (64, 128), (256, 512))


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("input"), "'input' is missing"),
        (lambda d: d["input"].pop("width"), "'input.width' is missing"),
        (lambda d: d["input"].update(width="640"), "'input.width' has the wrong type"),
        (lambda d: d["input"].update(height=0), "not positive"),
        (lambda d: d["input"].update(color="YUV"), "input.color"),
        (lambda d: d.update(format_version=99), "newer than this edge supports"),
        (lambda d: d["outputs"].pop("conf"), "lacks the role(s) conf"),
        (lambda d: d["priors"].update(steps=[8, 16]), "differ in length"),
    ],
)
def test_malformed_documents_name_the_field(mutate, needle: str) -> None:
    doc = json.loads(_meta().to_json())
    mutate(doc)
    with pytest.raises(ModelError) as err:
        ModelMeta.from_dict(doc, "m.onnx")
    assert needle in str(err.value)
    assert str(err.value).startswith("m.onnx:")
    assert "\n" not in str(err.value)


def test_not_json() -> None:
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelMeta.from_json("{nope", "x.onnx")
