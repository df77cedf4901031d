"""Every bad input through the real CLI: one `opdkit: error:` line naming the input and the fix, exit 2.

The table below is run by `tests/cli_driver.py` in one subprocess (one torch import for all
cases; each case's file-descriptor-2 output is captured, so a traceback or a stray library
line fails it). Nearly all of them must fail before any model loads. The cases that need
processes of their own (a second run on a locked directory, Ctrl-C, a full disk) are in
test_run_dir_safety.py.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _cases(t: Path, w: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, regex the one error line must match)."""
    base = [f"model.student={t / 'student'}", f"data.train={t / 'train.jsonl'}", "optim.steps=2",
            "optim.prompts_per_step=2", "optim.micro_batch=2", "rollout.max_new_tokens=4", "run.progress=false",
            "run.threads=1"]
    distill = ["distill", *base, f"model.teacher={t / 'teacher'}"]
    out = lambda name: f"run.out={w / ('out-' + name)}"
    cases = {
        "non_utf8_dataset": (["sft", *base, f"data.train={w / 'latin1.jsonl'}", out("a")],
                             r"latin1\.jsonl:2: byte 0xe9 at column 16 is not UTF-8; re-encode"),
        "malformed_jsonl_column": (["sft", *base, f"data.train={w / 'torn.jsonl'}", out("b")],
                                   r"torn\.jsonl:2:20: not valid JSON \(Expecting ',' delimiter at column 20\)"),
        "yaml_syntax": (["sft", "--config", str(w / "bad.yaml"), *base, out("c")],
                        r"bad\.yaml:3:1: YAML syntax error \(found character '\\t' that cannot start any token\); fix the file"),
        "did_you_mean_lr": (["sft", *base, "optim.learning_rate=1e-3", out("d")],
                            r"unknown config key 'optim.learning_rate'\. Did you mean 'optim.lr'\?"),
        "did_you_mean_in_yaml": (["sft", "--config", str(w / "lr.yaml"), *base, out("d")], r"Did you mean 'optim.lr'"),
        "damaged_safetensors": (["sft", *base, f"model.student={w / 'damaged'}", out("e")],
                                r"damaged/model\.safetensors is damaged or truncated: it holds 5000 bytes"),
        "lr_zero": (["sft", *base, "optim.lr=0", out("f")], r"optim\.lr must be a positive finite number, got 0\.0"),
        "lr_negative": (["sft", *base, "optim.lr=-1e-5", out("f")], r"optim\.lr must be a positive finite number"),
        "lr_nan": (["sft", *base, "optim.lr=.nan", out("f")], r"optim\.lr must be a positive finite number, got nan"),
        "every_prompt_over_limit": (["sft", *base, "data.max_prompt_tokens=3", out("g")],
                                    r"every prompt in .*train\.jsonl is longer than data\.max_prompt_tokens=3"),
        "unknown_objective": ([*distill, "objective.name=rkll", out("h")],
                              r"objective\.name: unknown objective 'rkll'\. Did you mean 'rkl'"),
        "unknown_option": ([*distill, "objective.options={temperature: 2}", out("h")],
                           r"objective\.options: objective 'topk_rkl_tail' has no option 'temperature'"),
        "k_over_vocabulary": ([*distill, "objective.options={k: 100000}", out("i")],
                              r"k=100000 is larger than the student's vocabulary .*\(320 tokens\)"),
        "unknown_guard_rule": (["sft", *base, "guard.disable=[no_such_rule]", out("j")],
                               r"guard\.disable names unknown rules \['no_such_rule'\]"),
        "guard_rule_without_bounds": (["sft", *base, "guard.rules=[{name: x, metric: train/loss}]", out("j")],
                                      r"guard rule 'x' needs at least one of above, below"),
        "guard_rule_bad_key": (["sft", *base, "guard.rules=[{name: x, metric: train/loss, abov: 1}]", out("j")],
                               r"guard rule 'x' has no key 'abov'; did you mean 'above'\?"),
        "self_distill_bf16_ema_teacher": (["self-distill", *base, "data.pi=be brief.", "teacher.self_weights=ema",
                                           "model.teacher_dtype=bfloat16", out("k2")],
                                          r"model\.teacher_dtype=bfloat16 with self-distill casts the frozen teacher's "
                                          r"own copy.*use teacher\.self_weights=frozen"),
        "self_distill_without_pi": (["self-distill", *base, f"data.train={w / 'no_pi.jsonl'}", out("k")],
                                    r"self-distill: no example in .*no_pi\.jsonl has privileged information"),
        "run_out_is_a_file": (["sft", *base, f"run.out={w / 'a_file'}"], r"run\.out=.*a_file is an existing file"),
        "resume_missing_directory": (["sft", *base, out("never_made"), "--resume"],
                                     r"--resume: .*never_made does not exist, so there is nothing to resume"),
        "plot_not_a_run": (["plot", str(w / "not_a_run")], r"not_a_run has no metrics\.jsonl, so it is not an opdkit run"),
        "report_not_a_run": (["report", str(w / "not_a_run"), "--out", str(w / "r.html")],
                             r"not_a_run has no metrics\.jsonl"),
        "report_corrupt_middle_line": (["report", str(w / "corrupt_run"), "--out", str(w / "r.html")],
                                       r"corrupt_run/metrics\.jsonl:1: not valid JSON .*; delete or repair that line"),
        "export_not_a_run": (["export", str(w / "not_a_run"), "--out", str(w / "x")], r"not_a_run has no config\.yaml"),
        "eval_damaged_model": (["eval", *base, f"model.student={w / 'damaged'}", f"data.eval={t / 'train.jsonl'}"],
                               r"model\.safetensors is damaged or truncated"),
        "probe_unknown_objective": (["probe", "pair", *distill[1:], "objective.name=rkll"], r"unknown objective 'rkll'"),
        "recipe_yaml_syntax": (["recipe", str(w / "recipe.yaml")], r"recipe\.yaml:\d+:\d+: YAML syntax error"),
        "lab_k_not_below_vocab": (["lab", "fixed-points", "--k", "20", "--vocab", "10", "--out", str(w / "fp")],
                                  r"--k 20 must be smaller than --vocab 10"),
        "lab_unknown_claim": (["lab", "reproduce", "--only", "C99", "--out", str(w / "lab")],
                              r"--only: unknown claims \['C99'\]"),
    }
    try:
        import gguf  # noqa: F401 - without it, transformers cannot read GGUF at all
        cases["damaged_gguf"] = (["sft", *base, f"model.student={w / 'gguf' / 'm.gguf'}", out("l")],
                                 r"m\.gguf is damaged or truncated")
    except ImportError:
        pass
    return cases


def _write_inputs(t: Path, w: Path) -> None:
    import shutil
    (w / "latin1.jsonl").write_bytes(b'{"prompt": "ok", "response": "r"}\n{"prompt": "caf\xe9", "response": "r"}\n')
    (w / "torn.jsonl").write_text('{"prompt": "ok", "response": "r"}\n{"prompt": "broken"\n')
    (w / "bad.yaml").write_text("optim:\n  lr: 1e-3\n\tsteps: 2\n")      # a tab indents line 3
    (w / "lr.yaml").write_text("optim:\n  learning_rate: 1e-3\n")
    shutil.copytree(t / "student", w / "damaged")
    weights = w / "damaged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (w / "gguf").mkdir()
    (w / "gguf" / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    (w / "no_pi.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (w / "a_file").write_text("not a directory")
    (w / "not_a_run").mkdir()
    (w / "corrupt_run").mkdir()
    (w / "corrupt_run" / "metrics.jsonl").write_text('{"step": 1, "train/lo\n{"step": 2, "train/loss": 1.0}\n')
    (w / "recipe.yaml").write_text("stages: [ {name: a\n")


@pytest.fixture(scope="module")
def outcomes(tiny_dir, tmp_path_factory):
    w = tmp_path_factory.mktemp("bad_inputs")
    _write_inputs(tiny_dir, w)
    cases = _cases(tiny_dir, w)
    (w / "cases.json").write_text(json.dumps({name: argv for name, (argv, _) in cases.items()}))
    subprocess.run([sys.executable, str(HERE / "cli_driver.py"), str(w / "cases.json"), str(w / "results.json")],
                   check=True, timeout=900)
    results = json.loads((w / "results.json").read_text())
    return {name: (results[name], pattern, w) for name, (_, pattern) in cases.items()}


CASE_NAMES = sorted(_cases(Path("t"), Path("w")))


def assert_one_error_line(code, stderr: str, pattern: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("opdkit: error: "), (code, stderr)
    assert "Traceback" not in stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", sorted(set(CASE_NAMES) | {"damaged_gguf"}))
def test_bad_input_is_one_line_and_exit_2(outcomes, name):
    if name not in outcomes:
        pytest.skip("the gguf package is not installed")
    result, pattern, w = outcomes[name]
    assert_one_error_line(result["code"], result["stderr"], pattern)


def test_a_refused_start_writes_nothing_into_run_out(outcomes):
    """No config.yaml, metrics or checkpoint from a start that failed: at most the lock file."""
    w = next(iter(outcomes.values()))[2]
    left = {p.name for d in w.glob("out-*") for p in d.iterdir()}
    assert left <= {".lock"}, left
