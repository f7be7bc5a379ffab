"""The encoder's forward pass on ONNX Runtime or OpenVINO, inside sentence-transformers' pipeline.

sentence-transformers' ``Transformer`` module tokenises, calls ``self.model(**features)`` and
reads ``last_hidden_state``; pooling and normalisation are the modules after it. Its own
``backend="onnx"/"openvino"`` put an optimum model in that slot (see
:mod:`deployments.encoder.export` for why optimum cannot be used here); :func:`attach` puts a
:class:`RuntimeModel` there instead, with the same call and result. So ``encode`` — tokeniser,
truncation, pooling, normalisation — is the same code for every backend, and only the
transformer's arithmetic differs.

Imported only by :class:`deployments.encoder.model.Embedder` for a non-torch backend, so torch
(which sentence-transformers needs anyway) is imported at the top here.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deployments.config import EncoderConfig
from deployments.encoder import export
from deployments.errors import ConfigError

log = logging.getLogger(__name__)

#: The packages each non-torch backend needs: its runtime, and what torch's ONNX exporter needs
#: (all in the ``cpu`` extra).
PACKAGES = {"onnx": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}


class RuntimeModel(torch.nn.Module):
    """Stands in for the transformers model: takes the tokenizer's tensors, returns
    ``{"last_hidden_state": tensor}``. A parameter-free ``nn.Module`` so that
    sentence-transformers can hold it where the transformers model was.

    Args:
        config: the transformers config (sentence-transformers reads the hidden size from it).
        input_names: the tensors the exported graph takes, in order.
        run: the compiled graph: input name -> int64 array, to the last hidden state (float32).
        backend: name for logs and ``repr``.
    """

    def __init__(self, config: Any, input_names: tuple[str, ...], run: Callable[[dict[str, Any]], Any],
                 backend: str) -> None:
        super().__init__()
        self.config = config
        self.input_names = input_names
        self._run = run
        self.backend = backend

    def forward(self, **features: Any) -> dict[str, Any]:
        feeds = {n: features[n].numpy() for n in self.input_names}
        return {"last_hidden_state": torch.from_numpy(self._run(feeds))}

    def extra_repr(self) -> str:
        return f"backend={self.backend}"


def input_names(st: Any) -> tuple[str, ...]:
    """The tensors the model's tokenizer produces, of those the export takes."""
    produced = st.tokenizer(["a"], return_tensors="pt").keys()
    return tuple(n for n in export.INPUT_NAMES if n in produced)


def attach(st: Any, cfg: EncoderConfig, threads: int) -> Path:
    """Run ``st``'s transformer on ``cfg.backend`` from now on (exported on first use, cached).

    Returns:
        the model file in use.

    Raises:
        ConfigError: a package the backend needs is missing, or the model is not a transformer
            sentence-transformers can hand over.
    """
    from sentence_transformers.base.modules.transformer import Transformer

    module = st[0]
    if not isinstance(module, Transformer):
        raise ConfigError(f"encoder.backend {cfg.backend!r} needs a transformer-based sentence-transformers model; "
                          f"{cfg.model!r} starts with {type(module).__name__}")
    missing = [p for p in PACKAGES[cfg.backend] if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"encoder.backend {cfg.backend!r} needs the package(s) {', '.join(missing)} "
                          "(pip install 'ragserve[cpu]')")
    names = input_names(st)
    variant = "int8" if cfg.precision == "int8" else "fp32"  # bf16 is a run-time choice on the fp32 file
    path = export.exported(module.model, names, cfg.model, cfg.backend, variant)
    run = _onnxruntime(path, threads) if cfg.backend == "onnx" else _openvino(path, threads, cfg.precision)
    module.model = RuntimeModel(module.model.config, names, run, f"{cfg.backend}/{cfg.precision}")
    log.info("encoder forward pass on %s/%s from %s (%d threads)", cfg.backend, cfg.precision, path, threads)
    return path


def _onnxruntime(path: Path, threads: int) -> Callable[[dict[str, Any]], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # one graph at a time: the batcher calls it from one thread
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(["last_hidden_state"], feeds)[0]


def _openvino(path: Path, threads: int, precision: str) -> Callable[[dict[str, Any]], Any]:
    import openvino as ov

    # The precision hint is explicit: left alone, OpenVINO picks bf16 by itself on CPUs that have
    # it, and fp32 results would then differ between machines of one cluster.
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    # share_outputs=False (the default) copies the result out of the request's buffer, which
    # the next call overwrites.
    return lambda feeds: request.infer(feeds)[compiled.output(0)]
