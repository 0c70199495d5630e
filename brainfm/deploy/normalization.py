"""Subject-normalisation statistics carried by every deployed form of a decoder (issue #12).

A decoder fine-tuned on subject-normalised windows (:mod:`brainfm.data.normalize`:
channel z-scoring or Euclidean alignment) is only correct on windows normalised the same
way. ``decoder.safetensors`` stores the statistics as tensors (:mod:`brainfm.models.serialization`);
this module carries the same ``(tensors, metadata)`` pair into the two deployed forms, so a
deployed model can never silently lose them:

* **bundles** (``brainfm quantize``): the ``normalization`` field of ``bundle.json``;
* **ONNX** (``brainfm export``, fp32 and int8): the model's ``metadata_props`` entry
  :data:`ONNX_KEY`. The graph itself takes windows already normalised (normalisation is a
  per-subject affine map fitted outside the model), so an ONNX consumer reads the method and
  scale here and applies them, as :class:`brainfm.attention.engagement.EngagementModel` does.

Both use one JSON document (:func:`to_json`)::

    {"metadata": {"method": "align", "subjects": {...}},            (SubjectNormalizer.describe-like)
     "tensors": {"<subject>.mean": {"shape": [C], "dtype": "float64", "data": [...]}, ...}}

Values survive the round trip exactly (JSON numbers are doubles; ``dtype`` is float32 or float64). A new user's
statistics come from their own calibration signal (``stats_source='calibration'`` or
``'running'``); the training subjects' statistics travel too, for offline use on them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from brainfm.data.normalize import METHODS, SubjectNormalizer

#: ``metadata_props`` key of an ONNX model's statistics.
ONNX_KEY = "brainfm.normalization"
#: The ``metadata_props`` key naming the subject whose layers an exported graph carries (``export --subject``).
ONNX_SUBJECT_KEY = "brainfm.deploy_subject"
#: The ``metadata_props`` key of the window length in s the decoder was trained on (``BrainDecoder.window_s``).
ONNX_WINDOW_KEY = "brainfm.window_s"
#: Tensor dtypes a document may hold.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Largest tensor a document may describe (a 1024-sensor whitening matrix), and most tensors.
MAX_TENSOR_ELEMENTS = 1024 * 1024
MAX_TENSORS = 4 * 4096

Normalization = tuple[dict[str, torch.Tensor], str]


def to_json(normalization: Normalization) -> dict[str, Any]:
    """``(tensors, metadata JSON)`` -> one JSON-serialisable document."""
    tensors, meta = normalization
    return {"metadata": json.loads(meta),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                            "data": v.detach().cpu().double().flatten().tolist()}
                        for k, v in tensors.items()}}


def from_json(doc: Any, where: str) -> Normalization:
    """The ``(tensors, metadata JSON)`` pair of a document, validated; errors name ``where``."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"{where}: invalid normalization statistics: {msg}")

    need(isinstance(doc, dict) and isinstance(doc.get("metadata"), dict) and isinstance(doc.get("tensors"), dict),
         "expected an object with 'metadata' and 'tensors'")
    meta = doc["metadata"]
    need(meta.get("method") in METHODS, f"method must be one of {METHODS}, got {meta.get('method')!r}")
    need(isinstance(meta.get("subjects"), dict), "metadata.subjects must be an object")
    need(len(doc["tensors"]) <= MAX_TENSORS, f"more than {MAX_TENSORS} tensors")
    tensors = {}
    for name, spec in doc["tensors"].items():
        need(isinstance(spec, dict) and isinstance(spec.get("shape"), list) and isinstance(spec.get("data"), list),
             f"tensor {name!r} needs 'shape' and 'data' lists")
        shape = spec["shape"]
        need(all(isinstance(d, int) and 0 <= d <= MAX_TENSOR_ELEMENTS for d in shape), f"bad shape of {name!r}")
        n = math.prod(shape)
        need(n <= MAX_TENSOR_ELEMENTS and len(spec["data"]) == n, f"{name!r} has {len(spec['data'])} values for shape {shape}")
        need(all(isinstance(v, (int, float)) and math.isfinite(v) for v in spec["data"]), f"{name!r} holds a non-number")
        need(spec.get("dtype", "float32") in DTYPES, f"{name!r} has dtype {spec.get('dtype')!r}, not one of {sorted(DTYPES)}")
        tensors[name] = torch.tensor(spec["data"], dtype=torch.float64).to(DTYPES[spec.get("dtype", "float32")]).reshape(shape)
    SubjectNormalizer.from_tensors(tensors, json.dumps(meta))  # every subject's tensors present and consistent
    return tensors, json.dumps(meta)


def write_onnx(path: str | os.PathLike, normalization: Normalization | None, subject: str | None = None,
               window_s: float | None = None) -> None:
    """Store ``normalization``, the graph's deploy ``subject`` and the training ``window_s`` in the ONNX
    file's ``metadata_props`` (keys :data:`ONNX_KEY`, :data:`ONNX_SUBJECT_KEY` and :data:`ONNX_WINDOW_KEY`,
    replacing any previous entries; None writes nothing)."""
    import onnx  # noqa: PLC0415 - deferred like every onnx import of brainfm.deploy

    keys = (ONNX_KEY, ONNX_SUBJECT_KEY, ONNX_WINDOW_KEY)
    model = onnx.load(os.fspath(path))
    props = [p for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    values = (None if normalization is None else json.dumps(to_json(normalization)), subject,
              None if window_s is None else repr(float(window_s)))
    for key, value in zip(keys, values):
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, os.fspath(path))


def onnx_window_s(props: dict[str, str], where: str) -> float | None:
    """The training window length in s recorded in an ONNX graph's ``metadata_props``, or None."""
    if ONNX_WINDOW_KEY not in props:
        return None
    try:
        value = float(props[ONNX_WINDOW_KEY])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: {ONNX_WINDOW_KEY} must be a length in s > 0, got {props[ONNX_WINDOW_KEY]!r}")
    return value


def onnx_properties(path_or_session: str | os.PathLike | Any) -> tuple[dict[str, str], str]:
    """The ``metadata_props`` of an ONNX file or onnxruntime session, and a name for messages."""
    if hasattr(path_or_session, "get_modelmeta"):
        return dict(path_or_session.get_modelmeta().custom_metadata_map), "ONNX session"
    import onnx  # noqa: PLC0415

    where = os.fspath(path_or_session)
    return {p.key: p.value for p in onnx.load(where, load_external_data=False).metadata_props}, where


def read_onnx(path_or_session: str | os.PathLike | Any) -> Normalization | None:
    """The statistics of an ONNX file or onnxruntime session, or None when it has none."""
    props, where = onnx_properties(path_or_session)
    if ONNX_KEY not in props:
        return None
    try:
        doc = json.loads(props[ONNX_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: {ONNX_KEY} is not JSON ({err})") from None
    return from_json(doc, where)


__all__ = ["ONNX_KEY", "ONNX_SUBJECT_KEY", "ONNX_WINDOW_KEY", "from_json", "onnx_properties", "onnx_window_s", "read_onnx",
           "to_json", "write_onnx"]
