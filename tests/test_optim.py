"""The optimizer and its schedule: closed forms of the LR factor, the peak-LR rescale, fused AdamW."""
from __future__ import annotations

import pytest
import torch

from opdkit.engine.optim import OptimSettings, adamw, lr_factor, make_optimizer, set_peak_lr


def test_lr_schedule_closed_forms():
    assert lr_factor(0, 4, 10, "constant") == pytest.approx(0.25)
    assert lr_factor(3, 4, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(10, 0, 10, "linear") == pytest.approx(0.0)
    assert lr_factor(5, 0, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(7, 0, 10, "constant") == 1.0


def test_peak_lr_rescale_keeps_the_schedules_position():
    """The guard's lr_factor: after 3 of 10 linear-decay steps, halving the peak halves the LR in force."""
    o = OptimSettings(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0, steps=10, schedule="linear",
                      max_grad_norm=1.0)
    optimizer, scheduler = make_optimizer(torch.nn.Linear(3, 2), o)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    before = optimizer.param_groups[0]["lr"]
    assert before == pytest.approx(1e-2 * 0.7)
    set_peak_lr(optimizer, scheduler, o, 0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(before / 2)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2 * 0.6)      # the schedule goes on from there


def test_fused_adamw_matches_the_default_update():
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    plain_params = [torch.nn.Parameter(w.clone()) for w in weights]
    fused = adamw(fused_params, lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(plain_params, lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for step in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((fused_params, fused), (plain_params, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_params, plain_params):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- optim.state=8bit

def _lm_and_batch():
    from opdkit.lab.tiny import build_model, build_tokenizer
    tok = build_tokenizer()
    model = build_model(tok, layers=2, hidden=64, seed=0).train()
    ids = torch.randint(0, len(tok), (4, 24), generator=torch.Generator().manual_seed(0))
    return model, ids


def _train(model, ids, state: str, steps: int, optimizer=None):
    o = OptimSettings(lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01, warmup_steps=0, steps=steps, schedule="constant",
                      max_grad_norm=0.0, state=state)
    optimizer = optimizer or make_optimizer(model, o)[0]
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return optimizer, losses


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_8bit_adamw_state_stays_near_fp32_adamw_over_n_steps():
    """20 steps of a tiny Llama on a fixed batch: the 8-bit moments' weights stay within 10% of the
    distance fp32 AdamW travelled (0.03 measured), and the loss curve within 2% (0.05%); the moments really are uint8."""
    pytest.importorskip("bitsandbytes")
    model, ids = _lm_and_batch()
    start = _flat(model)
    reference = _lm_and_batch()[0]
    _, fp32_losses = _train(reference, ids, "fp32", 20)
    optimizer, losses = _train(model, ids, "8bit", 20)
    assert type(optimizer).__name__ == "AdamW8bit"
    quantised = sum(p.numel() for p, s in optimizer.state.items() if s["state1"].dtype == torch.uint8)
    assert quantised > 0.9 * sum(p.numel() for p in model.parameters())   # norms (< 4096 values) keep fp32 moments
    travelled = (_flat(reference) - start).norm()
    assert travelled > 0.1
    assert (_flat(model) - _flat(reference)).norm() < 0.1 * travelled       # measured 0.03 on AVX-512
    assert losses[-1] < 0.5 * losses[0]
    assert max(abs(a - b) / b for a, b in zip(losses, fp32_losses)) < 0.02


def test_8bit_adamw_resumes_from_its_state_dict_exactly():
    """What a checkpoint does: state_dict after 3 steps, a new optimizer loads it, 3 more == 6 in a row."""
    pytest.importorskip("bitsandbytes")
    model, ids = _lm_and_batch()
    resumed = _lm_and_batch()[0]
    _train(model, ids, "8bit", 6)
    first, _ = _train(resumed, ids, "8bit", 3)
    saved = first.state_dict()
    o = OptimSettings(lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01, warmup_steps=0, steps=6, schedule="constant",
                      max_grad_norm=0.0, state="8bit")
    second = make_optimizer(resumed, o)[0]
    second.load_state_dict(saved)
    _train(resumed, ids, "8bit", 3, optimizer=second)
    torch.testing.assert_close(_flat(resumed), _flat(model), rtol=0, atol=0)


def test_8bit_state_without_bitsandbytes_is_one_config_error_naming_the_fix(monkeypatch, tmp_path):
    import importlib.util

    from opdkit.engine.config import load_config
    from opdkit.errors import ConfigError
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    (tmp_path / "train.jsonl").write_text('{"prompt": "hi"}\n')
    args = ["model.student=x", "model.teacher=x", f"data.train={tmp_path / 'train.jsonl'}"]
    with pytest.raises(ConfigError, match=r"optim.state=8bit needs bitsandbytes.*pip install bitsandbytes"):
        load_config("distill", None, [*args, "optim.state=8bit"])
    with pytest.raises(ConfigError, match=r"optim.state must be one of"):
        load_config("distill", None, [*args, "optim.state=4bit"])
    assert load_config("distill", None, args).optim.state == "fp32"


def test_a_run_with_8bit_state_and_row_seeded_decoding_resumes_as_if_uninterrupted(tiny_dir, tmp_path):
    """The real runner with optim.state=8bit and rollout.decode_batch=4: 2 steps + resume to 4 ==
    4 steps (metrics and weights), so both survive a checkpoint (the 8-bit state, the row seeds)."""
    pytest.importorskip("bitsandbytes")
    from conftest import engine_overrides
    from safetensors.torch import load_file

    from opdkit.engine.config import load_config
    from opdkit.engine.metrics import read_metrics
    from opdkit.engine.runner import run
    extra = {"model.teacher": tiny_dir / "teacher", "optim.state": "8bit", "rollout.decode_batch": 4}
    config = lambda out, steps: load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / out, **extra,
                                                                                 **{"optim.steps": steps}))
    full = run(config("full", 4))
    run(config("cut", 2))
    run(config("cut", 4), resume=True)
    comparable = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    assert comparable(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == comparable(full)
    weights = lambda out: load_file(str(tmp_path / out / "checkpoints" / "step_00000004" / "student.safetensors"))
    a, b = weights("full"), weights("cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
