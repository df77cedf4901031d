"""The served (vLLM) teacher on CPU: parsing vLLM's prompt_logprobs, refusals, and one real
training step scored through a server that answers in vLLM's format from a real tiny model."""
from __future__ import annotations

import math

import pytest
import torch

from opdkit.models.served import ServedTeacher, ServedTeacherError, parse_scores
from opdkit.objectives import TOP_K, teacher_mismatch

# vLLM /v1/completions with prompt=[5, 7, 9, 11], prompt_logprobs=2, max_tokens=1 (the shape of
# vllm.entrypoints.openai.protocol.CompletionResponseChoice.prompt_logprobs): entry 0 is null; each
# other entry holds the top-2 tokens and the actual token when it is outside them, keyed by id string.
CANNED = {"id": "cmpl-1", "object": "text_completion", "model": "teacher", "choices": [{
    "index": 0, "text": "x", "finish_reason": "length",
    "prompt_logprobs": [
        None,
        {"7": {"logprob": -0.1, "rank": 1, "decoded_token": "a"}, "3": {"logprob": -2.5, "rank": 2, "decoded_token": "b"}},
        {"4": {"logprob": -0.5, "rank": 1, "decoded_token": "c"}, "9": {"logprob": -1.2, "rank": 2, "decoded_token": "d"}},
        {"11": {"logprob": -3.0, "rank": 5, "decoded_token": "e"}, "2": {"logprob": -0.3, "rank": 1, "decoded_token": "f"},
         "6": {"logprob": -1.9, "rank": 2, "decoded_token": "g"}}]}]}


def test_canned_vllm_answer_parses_into_topk_and_sampled_scores():
    ids, lps, sampled = parse_scores(CANNED["choices"][0], prompt_len=2, response=[9, 11], k=2)
    assert ids.tolist() == [[4, 9], [2, 6]]                        # ordered by rank, not by key order
    torch.testing.assert_close(lps, torch.tensor([[-0.5, -1.2], [-0.3, -1.9]]))
    assert sampled.tolist() == pytest.approx([-1.2, -3.0])         # rank-5 token outside the top-2 still scored


def test_bad_answers_are_named():
    with pytest.raises(ServedTeacherError, match="--max-logprobs 3"):
        parse_scores(CANNED["choices"][0], prompt_len=2, response=[9, 11], k=3)
    with pytest.raises(ServedTeacherError, match="is this a vLLM server"):
        parse_scores({"text": "x"}, prompt_len=2, response=[9, 11], k=2)


def test_full_vocabulary_objectives_are_refused_and_topk_ones_accepted():
    for name, options in [("rkl", {}), ("jsd", {}), ("topk_rkl_tail", {}), ("topk_rkl_sg", {"support": "union"})]:
        assert "served teacher returns only its top-k" in teacher_mismatch(name, options, TOP_K)
    for name, options in [("sampled_rkl", {}), ("topk_fkl_teacher", {}), ("topk_rkl_tail", {"support": "teacher"})]:
        assert teacher_mismatch(name, options, TOP_K) is None


def test_temperature_other_than_one_warns():
    with pytest.warns(UserWarning, match="temperature 1"):
        ServedTeacher("http://x/v1", "t", None, 2, temperature=0.7)


def vllm_server(model, k: int):
    """A stand-in for `vllm serve`: answers /v1/completions with prompt_logprobs in vLLM's format,
    computed by a real HF model at T = 1."""
    def post(url: str, payload: dict) -> dict:
        assert url.endswith("/completions") and payload["max_tokens"] == 1 and payload["prompt_logprobs"] == k
        choices = []
        for i, ids in enumerate(payload["prompt"]):
            with torch.no_grad():
                logq = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)    # (L, V)
            entries = [None]
            for pos in range(1, len(ids)):
                row, token = logq[pos - 1], ids[pos]
                order = row.argsort(descending=True).tolist()
                keep = set(order[:k]) | {token}
                entries.append({str(t): {"logprob": float(row[t]), "rank": order.index(t) + 1, "decoded_token": "?"}
                                for t in keep})
            choices.append({"index": i, "text": "", "prompt_logprobs": entries})
        return {"choices": choices[::-1]}          # out of order on purpose: `index` decides
    return post


def test_a_training_step_through_the_served_teacher_equals_the_local_teacher(tiny_dir, tmp_path):
    from conftest import engine_overrides

    from opdkit.engine.config import load_config
    from opdkit.engine.optim import make_optimizer
    from opdkit.engine.runstate import initial_state
    from opdkit.engine.session import build_session, new_stream
    from opdkit.engine.train import StepSettings, train_step

    def step(url: str) -> dict:
        over = engine_overrides(tiny_dir, tmp_path / "run", **{
            "model.teacher": tiny_dir / "teacher", "teacher.url": url, "teacher.top_k": 8,
            "objective.name": "topk_rkl_tail", "objective.options": "{support: teacher, k: 8}"})
        s = build_session(load_config("distill", None, over))
        if url:
            s.teacher.post = vllm_server(local.teacher.model(), 8)
        settings = StepSettings.from_config(s.cfg)
        return train_step(s, settings, initial_state(s.cfg), new_stream(s),
                          *make_optimizer(s.student, settings.optim)).metrics

    local = build_session(load_config("distill", None, engine_overrides(tiny_dir, tmp_path / "l", **{
        "model.teacher": tiny_dir / "teacher"})))
    served, reference = step("http://vllm.invalid/v1"), step("")
    assert isinstance(local.teacher.model(), torch.nn.Module)
    for key in ("train/loss", "train/grad_norm", "rollout/tokens"):
        assert served[key] == pytest.approx(reference[key], rel=1e-4), key
    assert math.isfinite(served["train/loss"]) and served["train/loss"] > 0


def test_a_run_with_a_served_teacher_and_the_default_objective_is_refused(tiny_dir, tmp_path):
    from conftest import engine_overrides

    from opdkit.engine.config import load_config
    from opdkit.engine.session import build_session
    from opdkit.errors import ConfigError
    over = engine_overrides(tiny_dir, tmp_path, **{"model.teacher": "served-name", "teacher.url": "http://x/v1"})
    with pytest.raises(ConfigError, match="'topk_rkl_tail' needs the teacher's log-probabilities over support='student'"):
        build_session(load_config("distill", None, over))


def serve_json(answer):
    """A local HTTP server on a free port: each POST's JSON body goes to answer(path, payload), whose
    result is sent back as JSON. The caller shuts it down."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps(answer(self.path, payload)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_scores_over_real_http_from_a_server_speaking_vllms_format(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)          # the server is local
    seen = []
    server = serve_json(lambda path, payload: seen.append((path, payload)) or CANNED)
    try:
        teacher = ServedTeacher(f"http://127.0.0.1:{server.server_port}/v1/", "teacher", lambda example: [5, 7], 2)
        scores = teacher.score(["example"], [[9, 11]])
    finally:
        server.shutdown()
    assert seen == [("/v1/completions", {"model": "teacher", "prompt": [[5, 7, 9, 11]], "max_tokens": 1,
                                         "temperature": 1.0, "prompt_logprobs": 2})]
    assert scores.topk_ids.tolist() == [[[4, 9], [2, 6]]]
    torch.testing.assert_close(scores.sampled_logprobs, torch.tensor([[-1.2, -3.0]]))
