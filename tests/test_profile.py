"""Performance knobs: the step-time breakdown (its arithmetic, and that a real run accounts for
its step time), the bf16 rollout copy, the bf16 teacher, chunk size and the mmap threshold."""
from __future__ import annotations

import pytest
from conftest import engine_overrides

from opdkit import cli
from opdkit.engine.metrics import read_metrics
from opdkit.scale.profile import PHASES, PhaseTimer, breakdown, format_breakdown


def test_breakdown_means_shares_and_other_close_to_the_step():
    rows = [{"time/step_s": 99.0, "time/rollout_s": 90.0},                  # step 1: warm-up, left out
            {"time/step_s": 4.0, "time/rollout_s": 2.0, "time/backward_s": 1.0},
            {"time/step_s": 6.0, "time/rollout_s": 4.0, "time/backward_s": 1.0}]
    table = {name: (s, share) for name, s, share in breakdown(rows)}
    assert table["step"] == (5.0, 1.0)
    assert table["rollout"] == (3.0, 0.6)
    assert table["backward"] == (1.0, 0.2)
    assert table["other"][0] == pytest.approx(1.0)
    assert sum(share for name, (s, share) in table.items() if name != "step") == pytest.approx(1.0)
    assert "rollout" in format_breakdown(breakdown(rows), 2)


def test_phase_timer_accumulates_repeated_phases():
    timer = PhaseTimer()
    for _ in range(3):
        with timer("teacher"):
            sum(range(1000))
    assert set(timer.metrics()) == {"time/teacher_s"}
    assert timer.seconds["teacher"] > 0


def test_profiled_distill_run_times_every_phase_within_the_step(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["distill", "--profile", *engine_overrides(tiny_dir, out, **{"model.teacher": tiny_dir / "teacher"})]) == 0
    printed = capsys.readouterr().out
    assert "step-time breakdown" in printed
    for phase in ("rollout", "teacher", "student_forward", "backward", "optimizer", "diagnostics", "logging"):
        assert phase in printed
    for row in read_metrics(out / "metrics.jsonl"):
        timed = sum(row.get(f"time/{p}_s", 0.0) for p in PHASES)
        assert {f"time/{p}_s" for p in PHASES[:-1]} <= set(row)
        assert 0 < timed <= row["time/step_s"] * 1.001


def test_bf16_rollout_copy_follows_the_student_and_keeps_buffers_fp32(tiny_dir, tmp_path):
    import torch

    from opdkit.engine.config import load_config
    from opdkit.engine.runner import run
    from opdkit.engine.session import build_session
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "run", **{
        "model.teacher": tiny_dir / "teacher", "rollout.sampler_dtype": "bfloat16"}))
    s = build_session(cfg)
    copy = s.rollout_copy.model
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(b.dtype == torch.float32 for b in copy.buffers() if b.is_floating_point())
    with torch.no_grad():
        next(s.student.parameters()).add_(1.0)           # the student moves, as after an optimizer step
    model = s.rollout_model()
    for mine, theirs in zip(model.parameters(), s.student.parameters()):
        assert torch.equal(mine, theirs.to(torch.bfloat16))
    rows = run(cfg, session=s)
    assert all(r["train/skipped"] == 0 for r in rows)


def test_sampler_dtype_is_validated(tiny_dir, tmp_path):
    from opdkit.engine.config import load_config
    from opdkit.errors import ConfigError
    with pytest.raises(ConfigError, match="rollout.sampler_dtype"):
        load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path, **{
            "model.teacher": tiny_dir / "teacher", "rollout.sampler_dtype": "int4"}))


def test_small_chunks_and_mmap_threshold_change_memory_settings_not_results(tiny_dir, tmp_path):
    from opdkit.engine.metrics import read_metrics
    runs = {}
    for name, extra in {"default": {}, "small": {"objective.chunk_rows": 3, "run.mmap_threshold_kib": 1024}}.items():
        out = tmp_path / name
        assert cli.main(["distill", *engine_overrides(tiny_dir, out, **{"model.teacher": tiny_dir / "teacher", **extra})]) == 0
        runs[name] = [v for r in read_metrics(out / "metrics.jsonl") for v in (r["train/loss"], r["train/grad_norm"])]
    # Chunking changes only the order of float sums; Adam turns that into ~1e-5 after 3 steps.
    assert runs["small"] == pytest.approx(runs["default"], rel=1e-4)


def test_bf16_teacher_trains_with_finite_loss_close_to_fp32(tiny_dir, tmp_path):
    import torch

    from opdkit.engine.config import load_config
    from opdkit.engine.session import build_session
    losses = {}
    for dtype in ("", "bfloat16"):
        cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / (dtype or "fp32"), **{
            "model.teacher": tiny_dir / "teacher", "model.teacher_dtype": dtype, "optim.steps": 1}))
        s = build_session(cfg)
        assert next(s.teacher.model().parameters()).dtype == (torch.bfloat16 if dtype else torch.float32)
        from opdkit.engine.runner import run
        losses[dtype] = run(cfg, session=s)[0]["train/loss"]
    assert losses["bfloat16"] == pytest.approx(losses[""], rel=0.05)


def test_bf16_frozen_self_teacher_is_a_cast_copy_and_trains_close_to_fp32(tiny_dir, tmp_path):
    """model.teacher_dtype casts only the frozen self-teacher's copy: the student stays fp32, the copy holds the
    student's initial weights rounded to bf16, and one OPSD step's loss stays within bf16 rounding of fp32's."""
    import torch

    from opdkit.engine.config import load_config
    from opdkit.engine.runner import run
    from opdkit.engine.session import build_session
    losses = {}
    for dtype in ("", "bfloat16"):
        cfg = load_config("self-distill", overrides=engine_overrides(tiny_dir, tmp_path / (dtype or "fp32"), **{
            "data.pi": "always answer in spanish.", "model.teacher_dtype": dtype, "optim.steps": 1}))
        s = build_session(cfg)
        student, copy = dict(s.student.named_parameters()), dict(s.teacher.model().named_parameters())
        assert s.teacher.model() is not s.student and all(p.dtype == torch.float32 for p in student.values())
        for name, weight in copy.items():
            assert weight.dtype == (torch.bfloat16 if dtype else torch.float32)
            assert torch.equal(weight, student[name].detach().to(weight.dtype))
        losses[dtype] = run(cfg, session=s)[0]["train/loss"]
    assert losses["bfloat16"] == pytest.approx(losses[""], rel=0.05)
