"""A served teacher inside model.teachers, routed: its rows are scored by its top-k over real HTTP (a
local server speaking vLLM's format, computed by a real tiny model); a local member's rows by the
top-k of its full log-probs. A training step equals the one with both teachers local."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import engine_overrides
from test_served import serve_json, vllm_server

from opdkit import cli
from opdkit.engine.config import load_config
from opdkit.engine.optim import make_optimizer
from opdkit.engine.runner import run
from opdkit.engine.runstate import initial_state
from opdkit.engine.session import build_session, new_stream
from opdkit.engine.train import StepSettings, train_step
from opdkit.objectives import TeacherScores
from opdkit.objectives.scores import Head, top_k_only

K = 8
TOPK_OBJECTIVE = {"objective.name": "topk_rkl_tail", "objective.options": f"{{support: teacher, k: {K}}}",
                  "teacher.top_k": K}


def test_top_k_only_is_what_a_top_k_teacher_reports_of_the_full_scores():
    g = torch.Generator().manual_seed(0)
    head = Head(torch.randn(3, 5, 4, generator=g), torch.randn(11, 4, generator=g), None, 0.7)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    got, logq = top_k_only(TeacherScores(head=head), ids, 4), head.logprobs()
    top = logq.topk(4, -1)
    assert torch.equal(got.topk_ids, top.indices) and got.logprobs is None and got.head is None
    torch.testing.assert_close(got.topk_logprobs, top.values)
    torch.testing.assert_close(got.sampled_logprobs, logq.gather(-1, ids[..., None]).squeeze(-1))


def _serve(model):
    """A local HTTP server answering /v1/completions in vLLM's format from `model` (K top log-probs)."""
    return serve_json(vllm_server(model, K))


def _routed(tiny_dir, tmp_path):
    rows = [json.loads(line) for line in (tiny_dir / "train.jsonl").read_text().splitlines()]
    data = tmp_path / "routed.jsonl"
    data.write_text("".join(json.dumps({**r, "teacher": ("tutor", "peer")[i % 2]}) + "\n" for i, r in enumerate(rows)))
    return data


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)          # the server is local


def test_a_step_with_a_routed_served_teacher_equals_the_step_with_it_local(tiny_dir, tmp_path, no_proxy):
    data = _routed(tiny_dir, tmp_path)

    def step(peer) -> dict:
        teachers = json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": peer})
        s = build_session(load_config("distill", None, engine_overrides(tiny_dir, tmp_path / "run", **{
            "model.teachers": teachers, "data.train": data, **TOPK_OBJECTIVE})))
        settings = StepSettings.from_config(s.cfg)
        metrics = train_step(s, settings, initial_state(s.cfg), new_stream(s), *make_optimizer(s.student, settings.optim))
        return s, metrics.metrics

    local, reference = step(str(tiny_dir / "teacher"))          # peer: the same model as tutor, on other rows
    server = _serve(local.teacher.members["peer"].model())
    try:
        served, got = step({"url": f"http://127.0.0.1:{server.server_port}/v1", "model": "peer"})
    finally:
        server.shutdown()
    assert served.teacher.provides == "top-k" and local.teacher.provides == "full"
    assert got["diag/teacher/peer/share"] > 0 and got["diag/teacher/tutor/share"] > 0       # both teachers taught
    assert got["diag/teacher/peer/loss"] > 1e-3
    for key in ("train/loss", "train/grad_norm", "rollout/tokens", "diag/teacher/peer/loss", "diag/teacher/tutor/loss"):
        assert got[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key
    assert math.isfinite(got["train/loss"]) and got["train/loss"] > 0


def test_a_run_with_a_routed_served_teacher_evaluates_the_local_one(tiny_dir, tmp_path, no_proxy):
    from transformers import AutoModelForCausalLM
    data = _routed(tiny_dir, tmp_path)
    server = _serve(AutoModelForCausalLM.from_pretrained(tiny_dir / "student").eval())
    teachers = json.dumps({"tutor": str(tiny_dir / "teacher"),
                           "peer": {"url": f"http://127.0.0.1:{server.server_port}/v1", "model": "peer"}})
    try:
        rows = run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
            "model.teachers": teachers, "data.train": data, "data.eval": data, "run.eval_every": 2,
            "run.eval_limit": 4, "optim.steps": 2, **TOPK_OBJECTIVE})))
    finally:
        server.shutdown()
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["eval/teacher_kl/tutor"] > 0 and "eval/teacher_kl/peer" not in rows[-1]   # no full log-probs


SERVED = {"url": "http://127.0.0.1:9/v1", "model": "peer"}


@pytest.mark.parametrize("extra, says", [
    ({"teacher.combine": "mixture"}, "model.teachers.peer is served: it returns only its top-k, and "
                                     "teacher.combine=mixture is a geometric mean over the full vocabulary"),
    ({"rollout.source": "mix"}, "model.teachers.peer is served: it scores responses but cannot write them"),
    ({"objective.name": "rkl", "objective.options": "{}"}, "objective 'rkl' needs the teacher's log-probabilities "
                                                           "over the full vocabulary"),
    ({"model.teachers": json.dumps({"peer": {"url": "http://x/v1"}})}, "a served teacher is {url: "),
    ({"model.teachers": json.dumps({"peer": "http://x/v1"})}, "write a served teacher as {url: http://x/v1, model: NAME}"),
])
def test_bad_served_members_are_one_line_from_the_cli(tiny_dir, tmp_path, capsys, extra, says):
    over = {"model.teachers": json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": SERVED}),
            "data.train": _routed(tiny_dir, tmp_path), **TOPK_OBJECTIVE, **extra}
    code = cli.main(["distill", *engine_overrides(tiny_dir, tmp_path / "r", **over)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("opdkit: error:"), err
    assert says in err[0]
    if extra.get("objective.name") == "rkl":
        assert "topk_fkl_teacher" in err[0] and "(model.teachers.peer is served" in err[0]


def test_a_probe_with_a_served_member_says_what_to_probe_instead(tiny_dir, tmp_path, capsys):
    over = {"model.teachers": json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": SERVED}),
            "data.train": _routed(tiny_dir, tmp_path), **TOPK_OBJECTIVE}
    code = cli.main(["probe", "pair", *engine_overrides(tiny_dir, tmp_path / "r", **over)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("opdkit: error: probe pair needs a local teacher") and "model.teacher=PATH" in err[0]
