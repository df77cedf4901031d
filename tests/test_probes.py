"""Probes on tiny real models: numbers that follow from the construction, and the verdicts."""
from __future__ import annotations

import json

import pytest
from conftest import engine_overrides

from opdkit import cli
from opdkit.analysis.probes import pair_verdict, pi_verdict, probe_pair, probe_pi, probe_prefix
from opdkit.engine.config import load_config
from opdkit.engine.session import build_session


def test_pair_probe_on_a_model_and_itself_is_compatible(testbed, tmp_path):
    s = build_session(load_config("distill", overrides=[
        f"model.student={testbed / 'teacher'}", f"model.teacher={testbed / 'teacher'}", f"data.train={testbed / 'task.jsonl'}",
        "rollout.max_new_tokens=4", f"run.out={tmp_path}"]))
    out = probe_pair(s, prompts=8)
    assert out["identity_kl"] < 1e-6 and out["kl"] < 1e-6 and abs(out["nll_excess"]) < 1e-5
    assert out["overlap"] == pytest.approx(1.0)
    assert out["verdict"].startswith("COMPATIBLE")


def test_pair_verdict_thresholds():
    assert pair_verdict(0.1, 0.2, 0.9).startswith("COMPATIBLE")
    assert pair_verdict(0.01, 0.0, 0.05).startswith("COMPATIBLE")     # near-uniform pair: overlap alone misleads
    assert pair_verdict(4.6, 3.0, 0.1).startswith("RISKY")
    assert pair_verdict(1.5, 0.5, 0.1).startswith("RISKY")


def test_prefix_probe_shows_a_teacher_derailed_by_a_random_students_prefixes(testbed, tmp_path):
    s = build_session(load_config("distill", overrides=[
        f"model.student={testbed / 'init'}", f"model.teacher={testbed / 'teacher'}", f"data.train={testbed / 'task.jsonl'}",
        "rollout.max_new_tokens=4", f"run.out={tmp_path}"]))
    out = probe_prefix(s, fractions=(0.5, 0.75), prompts=25)
    assert out["teacher_alone"] == pytest.approx(1.0)
    assert out["teacher_after_0.75"] < out["teacher_alone"]
    assert 0.0 <= out["hedge_prob_after_0.5"] <= 1.0


def test_pi_probe_shared_rule_vs_instance_specific(tiny_dir, tmp_path):
    shared = build_session(load_config("self-distill", overrides=engine_overrides(tiny_dir, tmp_path / "a")))
    out = probe_pi(shared, prompts=4)
    assert out["distinct_pis"] == 1 and out["swap_kl"] == 0.0 and out["consensus_gap"] < 1e-6
    assert out["verdict"].startswith("SHARED")
    data = tmp_path / "specific.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {i} plus 2?", "pi": f"the answer is {i + 2}."}) + "\n"
                            for i in range(8)))
    specific = build_session(load_config("self-distill", overrides=engine_overrides(
        tiny_dir, tmp_path / "b", **{"data.train": data})))
    out = probe_pi(specific, prompts=4)
    assert out["distinct_pis"] == 8 and out["swap_kl"] > 0 and out["consensus_gap"] > 0


def test_pi_verdict_thresholds():
    assert pi_verdict(0.01, 0.2).startswith("SHARED")
    assert pi_verdict(0.15, 0.2).startswith("INSTANCE-SPECIFIC")
    assert pi_verdict(0.08, 0.2).startswith("MIXED")


def test_probe_command_writes_json(tiny_dir, tmp_path, capsys):
    overrides = engine_overrides(tiny_dir, tmp_path / "r", **{"model.teacher": tiny_dir / "teacher"})
    assert cli.main(["probe", "pair", *overrides, "--prompts", "2", "--out", str(tmp_path / "probes")]) == 0
    assert "probe pair:" in capsys.readouterr().out
    assert "verdict" in json.loads((tmp_path / "probes" / "probe_pair.json").read_text())
