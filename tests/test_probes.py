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


# ----------------------------------------------------------------------------- several teachers (model.teachers)

def _routed(source, path, names, pi: bool = True):
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    path.write_text("".join(json.dumps({**{k: v for k, v in r.items() if pi or k != "pi"}, "teacher": names[i % 2]})
                            + "\n" for i, r in enumerate(rows)))
    return path


def _cli_probe(capsys, name, overrides, out):
    code = cli.main(["probe", name, *overrides, "--prompts", "8", "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured, (json.loads((out / f"probe_{name}.json").read_text()) if code == 0 else None)


def test_probe_pair_with_routed_teachers_reports_each_teacher_on_its_rows(tiny_dir, tmp_path, capsys):
    """peer is the student itself and sees the same prompt (no PI): its KL is 0 on its rows; the routed
    numbers are the token-weighted pool of the teachers' own."""
    data = _routed(tiny_dir / "train.jsonl", tmp_path / "routed.jsonl", ("tutor", "peer"), pi=False)
    teachers = json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": str(tiny_dir / "student")})
    code, captured, out = _cli_probe(capsys, "pair", engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teachers": teachers, "data.train": data}), tmp_path / "probes")
    assert code == 0, captured.err
    assert out["peer/kl"] < 1e-6 and out["peer/verdict"].startswith("COMPATIBLE") and out["tutor/kl"] > 1e-3
    pooled = sum(out[f"{n}/kl"] * out[f"{n}/tokens"] for n in ("tutor", "peer"))
    assert out["tokens"] == out["tutor/tokens"] + out["peer/tokens"]
    assert out["kl"] * out["tokens"] == pytest.approx(pooled, rel=1e-5)
    assert "each teacher on its rows: tutor" in out["verdict"] and "tutor/verdict" in captured.out


def test_probe_prefix_probes_each_routed_teacher_on_its_own_examples(testbed, tmp_path, capsys):
    """tutor is the trained teacher (1.0 alone), rookie the untrained init: each writes its own examples."""
    data = _routed(testbed / "task.jsonl", tmp_path / "routed.jsonl", ("tutor", "rookie"))
    teachers = json.dumps({"tutor": str(testbed / "teacher"), "rookie": str(testbed / "init")})
    code, captured, out = _cli_probe(capsys, "prefix", [
        f"model.student={testbed / 'init'}", f"model.teachers={teachers}", f"data.train={data}",
        "rollout.max_new_tokens=4", f"run.out={tmp_path / 'r'}", "run.threads=1"], tmp_path / "probes")
    assert code == 0, captured.err
    assert out["tutor/teacher_alone"] == pytest.approx(1.0) and out["rookie/teacher_alone"] < 0.5
    for key in ("teacher_alone", "teacher_after_0.5", "hedge_prob_after_0.5"):        # 4 + 4 of 8 examples
        assert out[key] == pytest.approx((out[f"tutor/{key}"] + out[f"rookie/{key}"]) / 2)


@pytest.mark.parametrize("probe, extra, says", [
    ("prefix", {"teacher.combine": "mixture"}, "probe prefix needs a teacher that writes answers, and "
                                               "teacher.combine=mixture has none"),
    ("prefix", {"data.train": "NO_ANSWERS"}, "probe prefix needs examples with answers"),
])
def test_probes_that_cannot_run_say_why_in_one_line(tiny_dir, tmp_path, capsys, probe, extra, says):
    data = _routed(tiny_dir / "train.jsonl", tmp_path / "routed.jsonl", ("tutor", "peer"))
    if extra.get("data.train") == "NO_ANSWERS":
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        extra = {"data.train": tmp_path / "plain.jsonl"}
        extra["data.train"].write_text("".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n"
                                               for r in rows))
    teachers = json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": str(tiny_dir / "student")})
    code = cli.main(["probe", probe, *engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teachers": teachers, "data.train": data, **extra})])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("opdkit: error: " + says), err


def test_probe_pi_with_several_teachers_swaps_the_pi_under_the_routed_teachers(tiny_dir, tmp_path, capsys):
    data = _routed(tiny_dir / "train.jsonl", tmp_path / "routed.jsonl", ("tutor", "peer"))
    teachers = json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": str(tiny_dir / "student")})
    code, captured, out = _cli_probe(capsys, "pi", engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teachers": teachers, "data.train": data}), tmp_path / "probes")
    assert code == 0, captured.err                     # distill chosen: self-distill refuses model.teachers
    assert out["distinct_pis"] == 1 and out["swap_kl"] == 0.0 and out["student_kl"] > 0
