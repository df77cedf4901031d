"""models/loading: what a model argument resolves to, damaged weights refused by name, the tokenizer's
pad fallback, and the preflight's lm-head checks (tokenizer mismatches: test_engine_bad_input.py)."""
from __future__ import annotations

import pytest

from opdkit.errors import ModelError
from opdkit.lab.tiny import build_model, build_tokenizer, save_tiny
from opdkit.models.loading import PairReport, check_weights, load_tokenizer, preflight, resolve


def test_a_model_argument_resolves_to_a_directory_or_one_gguf_file(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve(str(hf)) == (hf, None)
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").write_bytes(b"")
    assert resolve(str(one)) == (one, "m.gguf") == resolve(str(one / "m.gguf"))
    (one / "n.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json and several .gguf files"):
        resolve(str(one))
    with pytest.raises(ModelError, match="is not a .gguf file; pass its directory instead"):
        resolve(str(hf / "config.json"))
    with pytest.raises(ModelError, match="does not exist; give a local HF model directory"):
        resolve(str(tmp_path / "missing"))


def test_a_truncated_weights_file_is_refused_by_name(tmp_path):
    directory = save_tiny(tmp_path / "m", layers=1)
    check_weights(directory, None)                                        # intact: nothing to say
    weights = next(directory.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match=f"model file {weights} is damaged or truncated"):
        check_weights(directory, None)


def test_a_tokenizer_without_pad_pads_with_eos(tmp_path):
    tok = build_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("{}")
    loaded = load_tokenizer(str(tmp_path / "t"))
    assert loaded.pad_token_id == loaded.eos_token_id == tok.eos_token_id


def test_preflight_scores_the_shared_lm_head_rows_and_refuses_a_head_smaller_than_the_tokenizer():
    tok = build_tokenizer()
    model, wider = build_model(tok, layers=1), build_model(tok, layers=1)
    wider.resize_token_embeddings(len(tok) + 8)
    report = preflight(tok, tok, model, wider)
    assert report.vocab == len(tok) and not report.problems
    assert any(f"lm-head rows differ (student {len(tok)}, teacher {len(tok) + 8})" in n for n in report.notes)
    narrow = build_model(tok, layers=1)
    narrow.resize_token_embeddings(len(tok) - 2)
    report = preflight(tok, tok, narrow, model)
    assert report.problems == [f"lm-head has {len(tok) - 2} rows but the tokenizer has {len(tok)} tokens"]
    with pytest.raises(ModelError, match="pair does not fit:\n  - lm-head has"):
        report.raise_if_bad()
    PairReport(vocab=3).raise_if_bad()                                    # no problems: no error
