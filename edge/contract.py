"""The model contract (DESIGN §1): the JSON document every exported model carries.

ONNX files hold it in ``metadata_props`` under :data:`METADATA_KEY`; an OpenVINO IR holds it in
``rt_info`` under the same key and in a sidecar ``<model>.featherface.json``. The edge reads
everything it needs from it (input size, colour order, normalisation, priors, output names), so a
new model never needs a new edge release. A model without it is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.errors import ModelError

METADATA_KEY = "featherface"
FORMAT_VERSION = 1
OUTPUT_ROLES = ("loc", "conf", "landmarks")


@dataclass(frozen=True)
class InputSpec:
    """Network input. ``width``/``height`` in pixels; pixels are ``(x - mean) / std`` per channel."""

    width: int
    height: int
    layout: str = "NCHW"
    color: str = "BGR"
    mean: tuple[float, float, float] = (104.0, 117.0, 123.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dynamic: bool = False  # graph accepts any H x W (priors are then recomputed per size)


@dataclass(frozen=True)
class PriorSpec:
    """RetinaFace-style anchors (see ``edge.anchors.prior_boxes``)."""

    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)
    clip: bool = False


@dataclass(frozen=True)
class ModelMeta:
    """The whole contract document. ``outputs`` maps a role (loc/conf/landmarks) to a graph output name.

    ``conf_softmax`` says whether the graph already applies softmax to class logits (index 1 = face).
    """

    name: str
    version: str
    input: InputSpec
    priors: PriorSpec = field(default_factory=PriorSpec)
    outputs: dict[str, str] = field(
        default_factory=lambda: {"loc": "loc", "conf": "conf", "landmarks": "landmarks"}
    )
    conf_softmax: bool = True
    num_landmarks: int = 5
    parameters: int = 0
    weights_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> ModelMeta:
        """Parse and validate; every problem is a :class:`ModelError` naming ``source`` and the field."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: FeatherFace metadata is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ModelError(f"{source}: FeatherFace metadata must be a JSON object")
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "model") -> ModelMeta:
        def need(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
            if key not in d:
                raise ModelError(f"{source}: metadata field '{where}{key}' is missing")
            if not isinstance(d[key], kind) or (isinstance(d[key], bool) and kind is not bool):
                raise ModelError(f"{source}: metadata field '{where}{key}' has the wrong type")
            return d[key]

        version = need(doc, "format_version", int, "")
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{source}: metadata format_version {version} is newer than this edge supports "
                f"({FORMAT_VERSION}); upgrade featherface-edge"
            )
        inp = need(doc, "input", dict, "")
        width, height = need(inp, "width", int, "input."), need(inp, "height", int, "input.")
        if width <= 0 or height <= 0:
            raise ModelError(f"{source}: metadata input size {width}x{height} is not positive")
        color = inp.get("color", "BGR")
        if color not in ("BGR", "RGB"):
            raise ModelError(f"{source}: metadata field 'input.color' must be BGR or RGB, got {color!r}")
        input_spec = InputSpec(
            width=width,
            height=height,
            layout=inp.get("layout", "NCHW"),
            color=color,
            mean=tuple(float(v) for v in inp.get("mean", (104.0, 117.0, 123.0))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in inp.get("std", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
            dynamic=bool(inp.get("dynamic", False)),
        )
        pri = doc.get("priors", {})
        priors = PriorSpec(
            min_sizes=tuple(tuple(int(s) for s in lvl) for lvl in pri.get("min_sizes", PriorSpec.min_sizes)),
            steps=tuple(int(s) for s in pri.get("steps", PriorSpec.steps)),
            variances=tuple(float(v) for v in pri.get("variances", PriorSpec.variances)),  # type: ignore[arg-type]
            clip=bool(pri.get("clip", False)),
        )
        if len(priors.min_sizes) != len(priors.steps):
            raise ModelError(f"{source}: metadata priors.min_sizes and priors.steps differ in length")
        outputs = need(doc, "outputs", dict, "")
        missing = [r for r in OUTPUT_ROLES[:2] if r not in outputs]
        if missing:
            raise ModelError(f"{source}: metadata 'outputs' lacks the role(s) {', '.join(missing)}")
        return cls(
            name=str(need(doc, "name", str, "")),
            version=str(need(doc, "version", str, "")),
            input=input_spec,
            priors=priors,
            outputs={str(k): str(v) for k, v in outputs.items()},
            conf_softmax=bool(doc.get("conf_softmax", True)),
            num_landmarks=int(doc.get("num_landmarks", 5)),
            parameters=int(doc.get("parameters", 0)),
            weights_sha256=str(doc.get("weights_sha256", "")),
            provenance=dict(doc.get("provenance", {})),
            format_version=version,
        )
