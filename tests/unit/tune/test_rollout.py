"""The sync pass's decisions between two encoders' copies of a collection."""

from __future__ import annotations

from deployments.tune.rollout import DocState, plan


def test_a_new_copy_gets_every_document() -> None:
    src = {"a": DocState("v1", 10), "b": DocState("v1", 20)}
    p = plan(src, {}, synced_at=None)
    assert (p.copy, p.delete, p.kept) == (["a", "b"], [], 0)


def test_an_incremental_pass_moves_only_what_changed_since_the_last_one() -> None:
    synced = 100
    src = {"same": DocState("v1", 50),
           "new_in_source": DocState("v1", 150),         # written through the source after the sync
           "deleted_in_target": DocState("v1", 50),      # the target's copy was deleted after the sync
           "newer_in_source": DocState("v2", 160),
           "newer_in_target": DocState("v2", 120)}
    dst = {"same": DocState("v1", 50),
           "newer_in_source": DocState("v1", 50),
           "newer_in_target": DocState("v3", 130),
           "deleted_in_source": DocState("v1", 40),      # gone from the source since the sync
           "new_in_target": DocState("v1", 140)}         # written through the target since the sync
    p = plan(src, dst, synced_at=synced)
    assert p.copy == ["new_in_source", "newer_in_source"]
    assert p.delete == ["deleted_in_source"]
    assert p.kept == 2  # same, newer_in_target


def test_a_rollback_pass_after_a_rollout_is_the_same_rule_the_other_way() -> None:
    # The old copy stopped at the rollout's last pass (t=100); the new one took writes since.
    old = {"kept": DocState("v1", 10), "dropped": DocState("v1", 20), "edited": DocState("v1", 30)}
    new = {"kept": DocState("v1", 10), "edited": DocState("v2", 150), "added": DocState("v1", 160)}
    p = plan(source=new, target=old, synced_at=100)
    assert p.copy == ["added", "edited"] and p.delete == ["dropped"] and p.kept == 1


def test_the_encoder_model_is_set_in_the_config_file_keeping_its_comments(tmp_path) -> None:
    import shutil
    from pathlib import Path

    from deployments.config import load_config
    from deployments.tune.rollout import set_encoder_model

    shipped = Path(__file__).resolve().parents[3] / "cluster" / "serve_config.yaml"
    cfg = tmp_path / "serve_config.yaml"
    shutil.copy(shipped, cfg)
    set_encoder_model(cfg, "tuned:encoder-0123456789abcdef")
    after = load_config(cfg)
    assert after.encoder.model == "tuned:encoder-0123456789abcdef"
    assert after.model_copy(update={"encoder": load_config(shipped).encoder}) == load_config(shipped)
    assert cfg.read_text().count("#") == shipped.read_text().count("#")
    old, new = shipped.read_text().splitlines(), cfg.read_text().splitlines()
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1


def test_an_encoder_block_without_a_model_gets_one_and_an_inline_one_is_refused(tmp_path) -> None:
    import pytest

    from deployments.config import load_config
    from deployments.errors import ConfigError
    from deployments.tune.rollout import set_encoder_model

    cfg = tmp_path / "c.yaml"
    cfg.write_text("applications:\n  - name: ragserve\n    args:\n      encoder:\n        # batching\n"
                   "        max_batch_size: 8\n      search:\n        top_k: 3\n")
    set_encoder_model(cfg, "tuned:encoder-0123456789abcdef")
    got = load_config(cfg)
    assert got.encoder.model == "tuned:encoder-0123456789abcdef" and got.encoder.max_batch_size == 8
    inline = tmp_path / "i.yaml"
    text = "applications:\n  - name: ragserve\n    args:\n      encoder: {max_batch_size: 8}\n"
    inline.write_text(text)
    with pytest.raises(ConfigError, match="by hand|no `encoder:`"):
        set_encoder_model(inline, "tuned:encoder-0123456789abcdef")
    assert inline.read_text() == text


def test_copies_of_a_collection_are_named_by_their_encoder() -> None:
    from deployments.protocol.types import encoded_collection, encoder_tag, is_default_collection, split_encoded
    
    tag = encoder_tag("tuned:encoder-0123456789abcdef")
    assert encoder_tag("bundled:all-MiniLM-L6-v2") == "" and tag == "0123456789abcdef"
    assert encoded_collection("acme__kb", "") == "acme__kb"
    assert split_encoded(encoded_collection("acme__kb", tag)) == ("acme__kb", tag)
    assert split_encoded("my__enc_notatag") == ("my__enc_notatag", "")
    assert is_default_collection(encoded_collection("acme__ragserve", tag), "ragserve")
