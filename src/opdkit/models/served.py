"""A teacher behind a vLLM (OpenAI-compatible) server, scored through its prompt logprobs.

    opdkit distill model.teacher=Qwen/Qwen3-8B teacher.url=http://host:8000/v1 teacher.top_k=20 ...
    # server: vllm serve Qwen/Qwen3-8B --max-logprobs 20

Each response is sent as token ids (teacher prompt with PI + the student's response) to
`/v1/completions` with `prompt_logprobs=k` and `max_tokens=1`. vLLM returns, for every
prompt position i, the log-probabilities of its top-k tokens and of the token actually at
i, given the tokens before i: `choices[j].prompt_logprobs[i] = {"<id>": {"logprob": x,
"rank": r, "decoded_token": s}, ...}` (entry 0 is null). That is exactly `TeacherScores`
with top-k ids, top-k log-probabilities and the sampled token's log-probability.

A served teacher never has the full vocabulary (`provides = "top-k"`), so objectives that
need it are refused when the run is built (`opdkit.objectives.teacher_mismatch`, from the
objectives table), naming the objectives that work. vLLM scores
prompts at temperature 1 (its `processed_logprobs` mode, when the server runs with it,
applies the request's temperature to prompt logprobs too, but a client cannot see the mode),
so a requested temperature != 1 is sent but warned about.
The student and the teacher must share the tokenizer: ids are sent as they are.

A served teacher can also be one of several teachers (`model.teachers: {name: {url, model}}`),
routed only (`served_problem`; opdkit.models.multiteacher scores the whole batch as top-k then).
"""
from __future__ import annotations

import contextlib
import json
import urllib.request
import warnings
from typing import Callable

import torch

from opdkit.errors import ConfigError
from opdkit.objectives.scores import TeacherScores


class ServedTeacherError(RuntimeError):
    """The server's answer cannot be used; the message says what was expected."""


def post_json(url: str, payload: dict, timeout: float = 120.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def parse_position(entry: dict | None, token: int, k: int) -> tuple[list[int], list[float], float]:
    """(top-k ids by rank, their log-probs, log-prob of `token`) from one prompt_logprobs entry."""
    if not entry:
        raise ServedTeacherError("the server returned no prompt logprobs at a response position")
    ranked = sorted(((int(t), v) for t, v in entry.items()), key=lambda item: item[1]["rank"])
    top = [(t, float(v["logprob"])) for t, v in ranked if v["rank"] <= k][:k]
    if len(top) < k:
        raise ServedTeacherError(f"the server returned {len(top)} top tokens where {k} were asked; start it with "
                                 f"--max-logprobs {k} or lower teacher.top_k")
    if token not in dict(ranked):
        raise ServedTeacherError(f"the server's prompt logprobs lack the scored token {token}")
    return [t for t, _ in top], [lp for _, lp in top], float(dict(ranked)[token]["logprob"])


def parse_scores(choice: dict, prompt_len: int, response: list[int], k: int) -> tuple[torch.Tensor, ...]:
    """(R, k) top-k ids, (R, k) log-probs and (R,) sampled log-probs for one response."""
    entries = choice.get("prompt_logprobs")
    if entries is None or len(entries) < prompt_len + len(response):
        raise ServedTeacherError(f"expected prompt_logprobs for {prompt_len + len(response)} tokens, got "
                                 f"{None if entries is None else len(entries)}; is this a vLLM server?")
    rows = [parse_position(entries[prompt_len + j], tok, k) for j, tok in enumerate(response)]
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long).reshape(len(rows), k)
    lps = torch.tensor([r[1] for r in rows], dtype=torch.float32).reshape(len(rows), k)
    return ids, lps, torch.tensor([r[2] for r in rows], dtype=torch.float32)


class ServedTeacher:
    """The `opdkit.models.teachers.Teacher` interface over a vLLM server: top-k scores, no local model."""

    provides = "top-k"

    def __init__(self, url: str, model: str, renderer, k: int, temperature: float = 1.0,
                 post: Callable[[str, dict], dict] = post_json):
        if k < 1:
            raise ConfigError(f"teacher.top_k must be at least 1, got {k}")
        if temperature != 1.0:
            warnings.warn(f"teacher.temperature={temperature}: vLLM scores prompt logprobs at temperature 1 unless the "
                          f"server runs with --logprobs-mode processed_logprobs, which opdkit cannot check; the "
                          f"teacher's scores may be at T = 1", stacklevel=2)
        self.url, self.name, self.renderer, self.k = url.rstrip("/"), model, renderer, k
        self.temperature, self.post = temperature, post

    def request(self, prompts: list[list[int]], responses: list[list[int]]) -> dict:
        return {"model": self.name, "prompt": [p + r for p, r in zip(prompts, responses)], "max_tokens": 1,
                "temperature": self.temperature, "prompt_logprobs": self.k}

    def score(self, examples: list, responses: list[list[int]]) -> TeacherScores:
        """(N, R, k) top-k scores and (N, R) sampled-token scores; padding rows repeat position 0's ids at -inf."""
        prompts = [self.renderer(e) for e in examples]
        answer = self.post(f"{self.url}/completions", self.request(prompts, responses))
        choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise ServedTeacherError(f"sent {len(prompts)} prompts, the server answered {len(choices)} choices")
        width = max(1, max(len(r) for r in responses))
        ids = torch.zeros(len(prompts), width, self.k, dtype=torch.long)
        lps = torch.full((len(prompts), width, self.k), -1e4)        # finite: padded positions are masked anyway
        sampled = torch.zeros(len(prompts), width)
        for i, (choice, p, r) in enumerate(zip(choices, prompts, responses)):
            if r:
                ids[i, :len(r)], lps[i, :len(r)], sampled[i, :len(r)] = parse_scores(choice, len(p), r, self.k)
        return TeacherScores(topk_ids=ids, topk_logprobs=lps, sampled_logprobs=sampled)

    # the rest of the teacher interface: nothing local to move, checkpoint or switch
    def model(self):
        return None

    def context(self):
        return contextlib.nullcontext()

    def after_step(self, student) -> None:
        pass

    def checkpoint_modules(self) -> dict:
        return {}


# ----------------------------------------------------------------------------- a served member of model.teachers

def served_problem(name: str, spec: dict, combine: str, source: str) -> str | None:
    """Why a served member {url, model} cannot run; None if it can (routed, student prefixes).

    A served teacher returns only its top-k and the sampled token's log-prob. Routed, its rows need
    nothing more: every row of the run is then scored as top-k (a local member's top-k made from its
    full log-probs), so the objective must be one that takes a top-k-only teacher (checked with
    the objective). A mixture is a geometric mean over the full vocabulary, which top-k cannot give,
    and a served teacher cannot write responses (rollout.source=teacher|mix).
    """
    where = f"model.teachers.{name}"
    if sorted(spec) != ["model", "url"] or not all(isinstance(v, str) and v for v in spec.values()):
        return f"{where}: a served teacher is {{url: http://host:8000/v1, model: NAME}}, got {spec!r}"
    if not spec["url"].startswith(("http://", "https://")):
        return f"{where}.url must be an http(s) URL (the server's /v1 base), got {spec['url']!r}"
    if combine != "route":
        return (f"{where} is served: it returns only its top-k, and teacher.combine=mixture is a geometric mean over "
                f"the full vocabulary; route it (teacher.combine=route) or make it a local teacher")
    if source != "student":
        return f"{where} is served: it scores responses but cannot write them; use rollout.source=student"
    return None


def served_members(paths: dict) -> list[str]:
    """The names of the served members ({url, model}) of model.teachers."""
    return [name for name, path in paths.items() if isinstance(path, dict)]
