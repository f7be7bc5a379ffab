"""Local exports of the encoder's transformer for the ONNX Runtime and OpenVINO backends.

The exports are made here, from the weights the encoder has loaded (bundled, a local path or
an HF id), never fetched from a hub, and cached under ``RAGSERVE_CACHE_DIR/encoders``:

* ``onnx-fp32``: ``torch.onnx.export`` of the transformer (inputs: the tokenizer's tensors;
  output: ``last_hidden_state``), batch and sequence axes dynamic;
* ``onnx-int8``: that file with the weights of every MatMul quantised to int8 per output
  channel by ONNX Runtime's dynamic quantisation (activations are quantised at run time);
* ``openvino-fp32``: the fp32 ONNX file read by OpenVINO and saved as its IR, fp32 weights.

A cache entry is keyed by a hash of the weights and the model config (so changed weights give a
new entry, whatever their source), the backend, the variant and :data:`EXPORT_VERSION`. It is
written with :func:`deployments.models.build_once`: one process exports while concurrent
replicas wait, and the directory appears whole, by one rename, or not at all.

Why not sentence-transformers' own ``backend="onnx"/"openvino"``: they load through
optimum-onnx / optimum-intel, whose releases pin transformers below 4.58 / 5.6 and fail to import
next to the transformers 5.x that vLLM needs (``get_parameter_dtype`` and a Qwen2-VL class were
gone, measured with optimum-onnx 0.1.0 and optimum-intel 2.2.0). The export and the runtime
calls they would make are a few lines each (here and in :mod:`deployments.encoder.runtime`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from deployments import models

log = logging.getLogger(__name__)

#: Part of every cache key: bump it when an export made by this module changes for the same weights.
EXPORT_VERSION = 1
#: The tensors a tokenizer may hand the transformer, in the order of the exported inputs.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: The file that marks a finished export of each backend (ONNX: one file; OpenVINO: .xml + .bin).
MODEL_FILE = {"onnx": "model.onnx", "openvino": "model.xml"}
#: ONNX opset of the export: the lowest torch's exporter writes without converting (it implements 18+),
#: read by every ONNX Runtime (1.14+) and OpenVINO release the cpu extra allows.
OPSET = 18


def weights_digest(model: Any) -> str:
    """sha256 of a torch model's weights (names, dtypes, shapes, bytes) and its config."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())  # raw bytes, whatever the dtype (bf16 too)
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(name: str, digest: str, backend: str, variant: str) -> str:
    """Directory name of one export: readable model name, weights hash, backend, variant, version."""
    last = name.removeprefix("bundled:").rstrip("/").rsplit("/", 1)[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", last) or "model"
    return f"{safe}-{digest[:16]}-{backend}-{variant}-v{EXPORT_VERSION}"


def exported(model: Any, input_names: tuple[str, ...], name: str, backend: str, variant: str) -> Path:
    """The model file of ``backend``/``variant`` for ``model``, exported on first use and cached.

    Args:
        model: the transformers model (``torch.nn.Module`` with a ``config``) that ST loaded.
        input_names: the tokenizer tensors it takes, of :data:`INPUT_NAMES`.
        name: the configured model reference (readable part of the cache directory's name).
        backend: ``onnx`` or ``openvino``.
        variant: ``fp32``, or ``int8`` (onnx only).
    """
    digest = weights_digest(model)
    return _exported(model, input_names, name, digest, backend, variant)


def _exported(model: Any, input_names: tuple[str, ...], name: str, digest: str, backend: str,
              variant: str) -> Path:
    target = models.cache_dir() / "encoders" / cache_key(name, digest, backend, variant)
    marker = MODEL_FILE[backend]
    if (target / marker).exists():
        return target / marker

    def build(out: Path) -> None:
        log.info("exporting %s for %s/%s into %s (once)", name, backend, variant, target)
        if (backend, variant) == ("onnx", "fp32"):
            export_onnx(model, input_names, out / marker)
            return
        # Every other variant is made from the fp32 ONNX file (itself cached).
        onnx_fp32 = _exported(model, input_names, name, digest, "onnx", "fp32")
        if (backend, variant) == ("onnx", "int8"):
            quantize_onnx(onnx_fp32, out / marker)
        elif (backend, variant) == ("openvino", "fp32"):
            onnx_to_openvino(onnx_fp32, out / marker)
        else:
            raise ValueError(f"no {variant} export for backend {backend}")

    return models.build_once(target, build, marker) / marker


def _last_hidden_state(model: Any, input_names: tuple[str, ...]) -> Any:
    """The module ``torch.onnx.export`` traces: positional inputs in a fixed order, one output."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(input_names, inputs, strict=True)), return_dict=True).last_hidden_state

    return LastHiddenState().eval()


def export_onnx(model: Any, input_names: tuple[str, ...], path: Path) -> None:
    """Export ``model`` (a transformers encoder) to one ONNX file with dynamic batch and sequence axes.

    torch's ``torch.export``-based exporter (``dynamo=True``, its default since 2.9; the TorchScript
    one is deprecated): about 8 s for MiniLM on 2 cores, once per cache key. Attention is exported
    in its eager form, which ONNX Runtime ran about 10 % faster than the SDPA graph (measured).
    """
    import torch

    model.set_attn_implementation("eager")
    # Two texts of different lengths: padding and the attention mask are in the traced graph.
    ids = torch.tensor([[1, 5, 6, 2], [1, 5, 2, 0]])  # any ids in the vocabulary; 0 is padding here
    sample = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with torch.inference_mode(), warnings.catch_warnings():
        # "The axis name: batch will not be used, since it shares the same shape constraints with
        # another axis": every input has the same two dynamic axes, as intended.
        warnings.filterwarnings("ignore", message="# The axis name")
        torch.onnx.export(_last_hidden_state(model, input_names), tuple(sample[n] for n in input_names),
                          str(path), input_names=list(input_names), output_names=["last_hidden_state"],
                          dynamic_shapes={"inputs": tuple({0: batch, 1: sequence} for _ in input_names)},
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)


def quantize_onnx(src: Path, dst: Path) -> None:
    """int8 weights for every MatMul (per output channel), activations quantised at run time.

    ``reduce_range`` keeps the weights in 7 bits: on x86 CPUs without VNNI, ONNX Runtime's u8 x s8
    kernels add pairs of products in 16 bits, which 8-bit weights can overflow; the same file is
    then correct on every CPU (it costs a little accuracy: docs/benchmarks.md). Only MatMuls:
    quantising the embedding tables (Gather) as well dropped the worst cosine to torch from 0.98
    to 0.85 on the eval passages (measured).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul"])


def onnx_to_openvino(src: Path, dst: Path) -> None:
    """OpenVINO IR (``.xml`` + ``.bin``) of an ONNX file, fp32 weights kept as they are.

    Read by OpenVINO's ONNX frontend rather than ``openvino.convert_model``: the latter goes
    through the conversion tool, which sends usage telemetry unless the user opted out.
    """
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(src)), str(dst), compress_to_fp16=False)
