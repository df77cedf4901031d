"""examples/heal/paired_accuracy.py on OPSD: the PI-conditioned model, rule rates, the base model's NLL.

The script answers through the same sampler and prompt renderer as opdkit; these tests check what it
adds for OPSD runs: that the PI reaches only the PI model's prompts, that the NLL is aligned to the
response positions (against one forward per prefix), and that rule rates and accuracies in its JSON
are what the checks say of the answers it saved.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.runner import run
from opdkit.models import checkpoint
from opdkit.models.loading import load_model, load_tokenizer
from opdkit.tasks.data import load_jsonl
from opdkit.tasks.rewards import make_check, numeric_reward

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "heal" / "paired_accuracy.py"
sys.path.insert(0, str(SCRIPT.parent))
import paired_accuracy  # noqa: E402  (examples/heal is not a package)

PI = "always answer in spanish."


def test_pi_reaches_only_the_pi_model_prompts(tiny_dir):
    tok = load_tokenizer(str(tiny_dir / "student"))
    examples = load_jsonl(str(tiny_dir / "train.jsonl"))[:3]
    args = SimpleNamespace(rule=[[PI, "contains:el"]], drop="", model=str(tiny_dir / "student"), teacher=False,
                           runs=[], pi_placement="user", system="", keep_every=0)
    models = paired_accuracy.plan(args, tok, examples)
    assert list(models) == [paired_accuracy.BASE, "untrained with rule 1 as PI"]
    bare, with_pi = models[paired_accuracy.BASE][1], models["untrained with rule 1 as PI"][1]
    for plain, ruled, example in zip(bare, with_pi, examples):
        assert PI not in tok.decode(plain) and PI in tok.decode(ruled) and example.prompt in tok.decode(ruled)
    assert models[paired_accuracy.BASE][2] == {"rule 1": "contains:el"}     # the bare model is read with the rule


def test_nll_matches_one_forward_per_prefix(tiny_dir):
    model = load_model(str(tiny_dir / "student"))
    torch.manual_seed(0)
    prompts, responses = [[3, 5, 7], [4, 9]], [[11, 2, 6, 8], [5]]
    per_token = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses):
            for j, token in enumerate(response):
                logits = model(torch.tensor([prompt + response[:j]])).logits[0, -1].float()
                per_token.append(-float(logits.log_softmax(-1)[token]))
    got = paired_accuracy.answer_nll(model, prompts, responses, pad_id=0)
    assert got == pytest.approx(sum(per_token) / len(per_token), rel=1e-4)
    assert paired_accuracy.answer_nll(model, [[3]], [[]], pad_id=0) == 0.0        # no tokens: nothing to score


@pytest.mark.slow
def test_scores_an_opsd_run_with_its_check(tiny_dir, tmp_path):
    check = "contains:the"
    out = tmp_path / "run"
    run(load_config("self-distill", overrides=engine_overrides(tiny_dir, out, **{"data.pi": PI, "run.check": check})))
    result = tmp_path / "paired.json"
    cmd = [sys.executable, str(SCRIPT), str(out), "--model", str(tiny_dir / "student"), "--drop", "",
           "--data", str(tiny_dir / "train.jsonl"), "--max-new-tokens", "6", "--base-nll", "--rule", PI, check,
           "--out", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(result.read_text())
    names = [paired_accuracy.BASE, "untrained with rule 1 as PI", f"run {checkpoint.latest(out).name}"]
    assert list(saved["correct"]) == names
    answers = [e.answer for e in load_jsonl(str(tiny_dir / "train.jsonl"))]
    for name in names:
        texts = saved["answers"][name]
        assert saved["correct"][name] == [bool(numeric_reward(t, a)) for t, a in zip(texts, answers)]
        assert saved["rule_hits"][name]["rule 1"] == [make_check(check)(t) for t in texts]
        assert saved["base_nll"][name] > 0
    assert saved["rule_hits"][names[2]]["run.check"] == saved["rule_hits"][names[2]]["rule 1"]
    assert "McNemar" in proc.stdout and "rule 1 rate" in proc.stdout


def test_a_bad_check_is_rejected_before_any_model_loads(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--drop", "", "--model", str(tmp_path / "absent"),
                           "--rule", PI, "startswith:x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: --rule" in proc.stderr and "regex:" in proc.stderr
