"""Unit tests of ``deployments.bench.encoders`` (``ragserve bench --mode encoder-backends``): the
backend list, the per-variant config and the table. The measurements themselves run models and
stacks: they are the documented benchmark, not tests."""

from __future__ import annotations

import pytest

from deployments.bench import encoders
from deployments.config import EncoderConfig


def test_parse_variants_puts_torch_first_and_expands_backend_names() -> None:
    assert encoders.parse_variants("onnx/int8,openvino") == ["torch/fp32", "onnx/int8", "openvino/fp32",
                                                              "openvino/bf16"]
    assert encoders.parse_variants("") == ["torch/fp32"]
    assert encoders.parse_variants(",".join(encoders.VARIANTS)) == list(encoders.VARIANTS)
    with pytest.raises(ValueError, match="unknown encoder backend 'onnx/bf16'"):
        encoders.parse_variants("onnx/bf16")


def test_every_variant_is_a_valid_encoder_config() -> None:
    base = EncoderConfig(max_batch_size=8)
    for v in encoders.VARIANTS:
        cfg = EncoderConfig.model_validate(encoders.encoder_cfg(base, v).model_dump())
        assert f"{cfg.backend}/{cfg.precision}" == v and cfg.max_batch_size == 8


def _row(rate: float) -> dict[str, float]:
    return {"c1_texts_per_s": rate, "c32_texts_per_s": 2 * rate, "passages_b32_texts_per_s": rate / 2,
            "cosine_min": 0.99, "cosine_mean": 0.995}


def test_table_shows_ratios_to_torch_and_marks_a_quality_loss() -> None:
    quality = {v: {"dense_ndcg@10": 0.73, "hybrid_ndcg@10": 0.87, "worst_loss_vs_torch": loss,
                   "within_tolerance": loss <= encoders.NDCG_TOLERANCE, "judged_on": ["dense_ndcg@10"]}
               for v, loss in (("torch/fp32", 0.0), ("onnx/int8", 0.01))}
    table = encoders.format_table({"inprocess": {"torch/fp32": _row(50.0), "onnx/int8": _row(125.0)},
                                   "quality": quality})
    torch_line, int8_line = table.splitlines()[1:3]
    assert torch_line.split()[1:3] == ["50.0", "1.00"]
    assert int8_line.split()[1:3] == ["125.0", "2.50"]
    assert int8_line.endswith("0.0100 !") and not torch_line.endswith("!")
    assert "over dense_ndcg@10" in table and "serve" not in table
