"""The paper model of docs/scaling.md: its parameter counts against real models and published sizes."""
from __future__ import annotations

import pytest

from opdkit.scale.scaling import QWEN3_1_7B, QWEN3_8B, Arch, Plan, memory, report


def test_parameter_count_equals_a_real_hf_model():
    from opdkit.lab.tiny import build_model, build_tokenizer
    tok = build_tokenizer()
    model = build_model(tok, layers=3, hidden=32)          # Llama: no q/k norm, untied head
    arch = Arch("tiny", hidden=32, layers=3, heads=4, kv_heads=2, head_dim=8, mlp=64, vocab=len(tok), tied=False,
                qk_norm=False)
    assert arch.params() == sum(p.numel() for p in model.parameters())


def test_qwen3_sizes_match_the_published_model_cards():
    # Model cards: Qwen3-8B 8.2B (6.95B non-embedding); Qwen3-1.7B 1.7B (1.4B non-embedding).
    assert QWEN3_8B.params() / 1e9 == pytest.approx(8.2, abs=0.05)
    assert QWEN3_8B.layers * QWEN3_8B.layer_params() / 1e9 == pytest.approx(6.95, abs=0.01)
    assert QWEN3_1_7B.params() / 1e9 == pytest.approx(1.7, abs=0.05)
    assert QWEN3_1_7B.layers * QWEN3_1_7B.layer_params() / 1e9 == pytest.approx(1.4, abs=0.05)


def test_sharded_optimizer_state_scales_with_one_over_gpus():
    key = "student fp32 master + fp32 grads + AdamW m, v (16 B/param), FSDP-sharded"
    eight, sixteen = memory(QWEN3_8B, QWEN3_1_7B, Plan(gpus=8))[key], memory(QWEN3_8B, QWEN3_1_7B, Plan(gpus=16))[key]
    assert eight == pytest.approx(2 * sixteen)
    assert eight == pytest.approx(QWEN3_1_7B.params() * 16 / 8 / 1e9)
    assert "Qwen3-8B: 8.191 B params" in report()
