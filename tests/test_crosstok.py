"""Cross-tokenizer OPD (issue 16 part 3) on a tiny pair with two different locally built tokenizers.

Student: byte-level BPE with ChatML (`build_tokenizer`); teacher: a SentencePiece-style BPE of a base
model ('▁' that ends tokens, byte fallback, EOS '</s>', no chat template: `build_base_tokenizer`).
Checked: the alignment partitions both token sequences into chunks that spell the same text; the
chunk rewards telescope to log Q(text) - log P(y) (so their expectation, by enumeration, is minus
the sequence-level reverse KL); chunk_rkl's gradient is -sum_c r_c grad log P(c), equals sampled_rkl
on one-token chunks, and the chunked path equals the plain path even with row chunks that would
split a chunk; the teacher's scores against a direct forward of the teacher; bad inputs through the
real CLI; and a tiny distill run end to end.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizer

from opdkit.errors import ModelError
from opdkit.lab.tiny import build_base_tokenizer, build_model, build_tokenizer, save_tiny
from opdkit.models.alignment import Aligner, offset_starts, shared_vocabulary
from opdkit.models.crosstok import CrossTokenizerTeacher
from opdkit.models.teachers import PromptRenderer
from opdkit.objectives import make_objective
from opdkit.objectives.chunks import chunk_rewards, row_slices
from opdkit.objectives.logprobs import chunked_objective_loss, objective_loss
from opdkit.objectives.scores import Head, ObjectiveInputs, TeacherScores
from opdkit.tasks.data import Example

HERE = Path(__file__).parent
TEXTS = ["the answer is 5.", " the quick brown fox jumps over the lazy dog", "hola gracias, por favor!\n\n  buenos dias",
         "naïve café 😀 12 + 3 = 15", "", "x", "  leading and trailing  ", "<|im_start|> in the text"]


@pytest.fixture(scope="module")
def pair():
    return build_tokenizer(), build_base_tokenizer()


def _chunks_of(chunk_of: list[int], ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for c, i in zip(chunk_of, ids):
        out.setdefault(c, []).append(i)
    return out


def _assert_partition(chunk_of: list[int], n_chunks: int) -> None:
    """Chunk indices start at 0, never fall, rise by one at a time and reach the last chunk."""
    assert chunk_of[0] == 0 and chunk_of[-1] == n_chunks - 1
    assert all(b - a in (0, 1) for a, b in zip(chunk_of, chunk_of[1:]))


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("stop", [False, True])
def test_chunks_partition_both_sequences_and_spell_the_same_text(pair, text, stop):
    student_tok, teacher_tok = pair
    ids = list(student_tok(text, add_special_tokens=False)["input_ids"]) + ([student_tok.eos_token_id] if stop else [])
    if not ids:
        return
    a = Aligner(student_tok, teacher_tok)(ids)
    assert a.text == student_tok.decode(ids[:-1] if stop else ids)
    assert len(a.student_chunk) == len(ids) and len(a.teacher_chunk) == len(a.teacher_ids)
    _assert_partition(a.student_chunk, a.chunks)
    _assert_partition(a.teacher_chunk, a.chunks)
    student, teacher = _chunks_of(a.student_chunk, ids), _chunks_of(a.teacher_chunk, a.teacher_ids)
    for c in range(len(a.bounds) - 1):
        piece = a.text[a.bounds[c]:a.bounds[c + 1]]
        assert student_tok.decode(student[c]) == piece == teacher_tok.decode(teacher[c])
    if stop:      # the EOS chunk: one token each side, the teacher's EOS
        assert student[a.chunks - 1] == [student_tok.eos_token_id] and teacher[a.chunks - 1] == [teacher_tok.eos_token_id]


def test_one_tokenizer_gives_one_token_chunks(pair):
    student_tok, _ = pair
    ids = list(student_tok(TEXTS[1], add_special_tokens=False)["input_ids"]) + [student_tok.eos_token_id]
    a = Aligner(student_tok, student_tok)(ids)
    assert a.teacher_ids == ids and all(a.single())


class CharTokenizer(PreTrainedTokenizer):
    """A slow (pure Python) character tokenizer: no offsets; `known` limits the characters it keeps."""

    def __init__(self, known: str, **kwargs):
        self.table = {"</s>": 0, "?": 1, **{ch: i + 2 for i, ch in enumerate(dict.fromkeys(known))}}
        self.names = {i: t for t, i in self.table.items()}
        super().__init__(eos_token="</s>", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.table)

    def get_vocab(self):
        return dict(self.table)

    def _tokenize(self, text, **kwargs):
        return list(text)

    def _convert_token_to_id(self, token):
        return self.table.get(token, 1)

    def _convert_id_to_token(self, index):
        return self.names[index]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)


def test_a_tokenizer_without_offsets_is_aligned_by_decoding_or_refused(pair):
    student_tok, _ = pair
    text = "the answer is 5."
    slow = CharTokenizer(text)
    assert not slow.is_fast
    ids, starts = offset_starts(slow, text)
    assert starts == list(range(len(text)))
    a = Aligner(student_tok, slow)(list(student_tok(text, add_special_tokens=False)["input_ids"]))
    assert a.bounds[-1] == len(text) and all(len(a.text[a.bounds[c]:a.bounds[c + 1]]) >= 1 for c in range(a.chunks))
    with pytest.raises(ModelError, match="no character offsets .* does not give back the text"):
        offset_starts(CharTokenizer("abc"), text)


def test_shared_vocabulary_pairs_identical_strings(pair):
    student_tok, teacher_tok = pair
    shared = shared_vocabulary(student_tok, teacher_tok)
    assert shared
    for s, t in shared.items():
        assert student_tok.decode([s]).replace("\u2581", " ") == teacher_tok.decode([t])


# ----------------------------------------------------------------------------- the chunk objective

def _random_case(seed: int = 0, n: int = 2, t: int = 7, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g, dtype=torch.float64)
    ids = torch.randint(0, v, (n, t), generator=g)
    sizes = [[1, 3, 2, 1], [2, 2, 1, 2]]            # chunk lengths per row (sum = t)
    chunk_ids = torch.tensor([[r * t + start for start, size in _starts(row) for _ in range(size)]
                              for r, row in enumerate(sizes)])
    chunk_lp = torch.zeros(n, t, dtype=torch.float64)
    for r in range(n):
        for c in chunk_ids[r].unique():
            chunk_lp[r][chunk_ids[r] == c] = -torch.rand((), generator=g, dtype=torch.float64) * 5
    return logits, ids, chunk_ids, chunk_lp


def _starts(sizes: list[int]):
    start = 0
    for size in sizes:
        yield start, size
        start += size


def test_chunk_rkl_gradient_is_the_chunk_policy_gradient():
    logits, ids, chunk_ids, chunk_lp = _random_case()
    z = logits.clone().requires_grad_()
    inputs = ObjectiveInputs(ids, TeacherScores(chunk_ids=chunk_ids, chunk_logprobs=chunk_lp))
    (grad,) = torch.autograd.grad(make_objective("chunk_rkl")(z, inputs).loss.sum(), z)
    w = logits.clone().requires_grad_()
    logp_y = torch.log_softmax(w, -1).gather(-1, ids[..., None]).squeeze(-1)
    expected = 0.0
    for c in chunk_ids.unique():                   # -sum_c sg(log Q(c) - log P(c)) * log P(c)
        where = chunk_ids == c
        log_p_chunk = logp_y[where].sum()
        expected = expected - (chunk_lp[where][0] - log_p_chunk.detach()) * log_p_chunk
    (want,) = torch.autograd.grad(expected, w)
    torch.testing.assert_close(grad, want)


def test_chunk_rkl_on_one_token_chunks_is_sampled_rkl():
    logits, ids, _, chunk_lp = _random_case(seed=1)
    behaviour = torch.log(torch.rand(ids.shape, dtype=torch.float64) * 0.5 + 0.1)
    singles = torch.arange(ids.numel()).view(ids.shape)
    chunked = ObjectiveInputs(ids, TeacherScores(chunk_ids=singles, chunk_logprobs=chunk_lp), behaviour)
    sampled = ObjectiveInputs(ids, TeacherScores(sampled_logprobs=chunk_lp), behaviour)
    outs = []
    for name, inputs in (("chunk_rkl", chunked), ("sampled_rkl", sampled)):
        z = logits.clone().requires_grad_()
        loss = make_objective(name)(z, inputs).loss
        outs.append((loss.detach(), torch.autograd.grad(loss.sum(), z)[0]))
    torch.testing.assert_close(outs[0], outs[1])


def test_row_ranges_never_split_a_chunk():
    chunk_ids = torch.tensor([0, 0, 0, 3, 4, 4, 6, 6, 6, 6, 10])
    for size in range(1, 6):
        ranges = row_slices(len(chunk_ids), size, chunk_ids)
        assert ranges[0].start == 0 and ranges[-1].stop == len(chunk_ids)
        assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
        assert all(chunk_ids[r.start] != chunk_ids[r.start - 1] for r in ranges[1:])


def test_chunked_path_equals_plain_path_with_chunks_across_row_chunks():
    g = torch.Generator().manual_seed(3)
    _, ids, chunk_ids, chunk_lp = _random_case(seed=2)
    hidden = torch.randn(*ids.shape, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64)
    inputs = ObjectiveInputs(ids, TeacherScores(chunk_ids=chunk_ids, chunk_logprobs=chunk_lp))
    weights = torch.rand(ids.shape, generator=g, dtype=torch.float64)
    results = []
    for chunk in (None, 2):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        objective = make_objective("chunk_rkl")
        r = objective_loss(objective, h @ w.t(), inputs, weights) if chunk is None else \
            chunked_objective_loss(objective, Head(h, w), inputs, weights, chunk_size=chunk)
        results.append((r.loss.detach(), *torch.autograd.grad(r.loss, (h, w))))
    for a, b in zip(*results):         # the chunked path accumulates the lm-head gradient in fp32
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the teacher's scores

@pytest.fixture(scope="module")
def teacher(pair):
    student_tok, teacher_tok = pair
    model = build_model(teacher_tok, layers=1, hidden=32, seed=1).double()
    renderer = PromptRenderer(teacher_tok, with_pi=True)          # no template: plain text
    return CrossTokenizerTeacher(model, renderer, student_tok, teacher_tok, k=4)


def _direct_logq(teacher: CrossTokenizerTeacher, example: Example, text: str, stop: bool) -> float:
    """log Q of the teacher's own tokenisation of `text` (+ EOS) after its prompt: one plain forward."""
    tok = teacher.aligner.teacher_tok
    prompt = teacher.renderer(example)
    reply = list(tok(text, add_special_tokens=False)["input_ids"]) + ([tok.eos_token_id] if stop else [])
    with torch.no_grad():
        logits = teacher.model()(torch.tensor([prompt + reply])).logits[0].double()
    logq = torch.log_softmax(logits, -1)[len(prompt) - 1:-1]
    return float(logq.gather(-1, torch.tensor(reply)[:, None]).sum())


def test_chunk_rewards_telescope_and_their_expectation_is_minus_the_sequence_kl(pair, teacher):
    """Enumerate every 3-token response over 4 student tokens under an explicit policy P: each response's
    chunk rewards sum to log Q(text) - log P(y), so E_P[sum_c r_c] = -KL(P || Q(text(.)))."""
    student_tok, _ = pair
    words = [student_tok(w, add_special_tokens=False)["input_ids"][0] for w in ("the", " answer", "s", " is")]
    g = torch.Generator().manual_seed(5)
    table = torch.log_softmax(torch.randn(len(words) + 1, len(words), generator=g, dtype=torch.float64), -1)
    seqs = list(itertools.product(range(len(words)), repeat=3))
    logp_tokens = torch.tensor([[table[prev, cur] for prev, cur in zip((len(words),) + s[:-1], s)] for s in seqs])
    responses = [[words[i] for i in s] for s in seqs]
    example = Example(prompt="what is the answer?")
    scores = teacher.score([example] * len(seqs), responses)
    rewards = chunk_rewards(logp_tokens, scores.chunk_ids, scores.chunk_logprobs)
    firsts = torch.zeros_like(scores.chunk_ids, dtype=torch.bool)
    firsts[:, 0] = True
    firsts[:, 1:] = scores.chunk_ids[:, 1:] != scores.chunk_ids[:, :-1]
    per_response = (rewards * firsts).sum(-1)                  # one r_c per chunk
    log_p = logp_tokens.sum(-1)
    log_q = torch.tensor([_direct_logq(teacher, example, student_tok.decode(r), False) for r in responses])
    torch.testing.assert_close(per_response, log_q - log_p, rtol=1e-6, atol=1e-5)      # the teacher's scores are fp32
    prob = log_p.exp()
    assert abs(float(prob.sum()) - 1.0) < 1e-12
    kl = float((prob * (log_p - log_q)).sum())
    assert abs(float((prob * per_response).sum()) + kl) < 1e-5 and kl > 0


def test_teacher_scores_chunks_and_shared_top_k(pair, teacher):
    student_tok, teacher_tok = pair
    example = Example(prompt="what is two plus three?")
    texts = ["the answer is 5.", "naïve café, hola"]
    responses = [list(student_tok(t, add_special_tokens=False)["input_ids"]) + [student_tok.eos_token_id] for t in texts]
    responses[1] = responses[1][:-1]                           # one stopped, one cut off
    scores = teacher.score([example, example], responses)
    renderer_prompt = teacher.renderer(example)
    assert teacher_tok.decode(renderer_prompt) == "what is two plus three?\n"
    for row, (text, stop) in enumerate(zip(texts, (True, False))):
        n = len(responses[row])
        ids, lps = scores.chunk_ids[row, :n], scores.chunk_logprobs[row, :n]
        firsts = torch.cat([torch.tensor([True]), ids[1:] != ids[:-1]])
        assert abs(float(lps[firsts].sum()) - _direct_logq(teacher, example, text, stop)) < 1e-5
        assert torch.equal(scores.topk_mask[row, :n], firsts) and not scores.topk_mask[row, n:].any()
        top = scores.topk_ids[row, :n][firsts]
        assert all(int(i) in set(teacher.shared_student.tolist()) for i in top.reshape(-1))
        assert (scores.topk_logprobs[row, :n][firsts].diff(dim=-1) <= 0).all()
        a = teacher.aligner(responses[row])           # the top-k at chunk c is the teacher's at its first token of c
        prompt = teacher.renderer(example)
        with torch.no_grad():
            logits = teacher.model()(torch.tensor([prompt + a.teacher_ids])).logits[0].double()
        logq = torch.log_softmax(logits, -1)[len(prompt) - 1:]
        first_teacher = [a.teacher_chunk.index(c) for c in range(a.chunks)]
        want = logq[first_teacher][:, teacher.shared_teacher].topk(4, dim=-1)
        torch.testing.assert_close(scores.topk_logprobs[row, :n][firsts].double(), want.values, rtol=1e-5, atol=1e-5)
        assert torch.equal(top, teacher.shared_student[want.indices])
        single = scores.diagnostics["align_single"][row, :n]
        assert set(single.tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def xtok_dir(tmp_path_factory, pair):
    root = tmp_path_factory.mktemp("xtok")
    student_tok, teacher_tok = pair
    save_tiny(root / "student", layers=1, seed=0, tokenizer=student_tok)
    save_tiny(root / "teacher", layers=1, seed=1, tokenizer=teacher_tok)
    lossy = build_base_tokenizer()
    from tokenizers import normalizers
    lossy.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(),
                                                               normalizers.Replace(" ", "\u2581")])
    save_tiny(root / "lossy", layers=1, seed=1, tokenizer=lossy)
    from transformers import ByT5Tokenizer  # slow (pure Python): no offsets, aligned by decoding
    save_tiny(root / "bytes", layers=1, seed=1, tokenizer=ByT5Tokenizer())
    with open(root / "train.jsonl", "w") as fh:
        for i in range(8):
            fh.write(json.dumps({"prompt": f"what is {i} plus 2?", "answer": str(i + 2)}) + "\n")
    return root


def _run_cli(cases: dict, work: Path) -> dict:
    (work / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(HERE / "cli_driver.py"), str(work / "cases.json"), str(work / "results.json")],
                   check=True, timeout=600)
    return json.loads((work / "results.json").read_text())


def test_bad_cross_tokenizer_inputs_through_the_cli(xtok_dir, tmp_path):
    t = xtok_dir
    base = ["distill", f"model.student={t / 'student'}", f"data.train={t / 'train.jsonl'}", "optim.steps=1",
            "optim.prompts_per_step=2", "optim.micro_batch=2", "rollout.max_new_tokens=4", "run.progress=false",
            "run.threads=1"]
    xtok = [*base, f"model.teacher={t / 'teacher'}"]
    cases = {
        "full_vocab_objective": ([*xtok, "objective.name=rkl", f"run.out={tmp_path / 'a'}"],
                                 r"objective 'rkl' needs .* another tokenizer .* work across tokenizers: chunk_rkl"),
        "sampled_rkl": ([*xtok, "objective.name=sampled_rkl", f"run.out={tmp_path / 'b'}"],
                        r"'sampled_rkl' needs the teacher's log-probability of each student token.*chunk_rkl"),
        "student_topk": ([*xtok, "objective.name=topk_rkl_tail", f"run.out={tmp_path / 'c'}"], r"shared_topk"),
        "lossy_tokenizer": ([*base, f"model.teacher={t / 'lossy'}", "objective.name=chunk_rkl",
                             f"run.out={tmp_path / 'd'}"], r"changes text on a round trip"),
        "mixture_member": ([*base, f"model.teachers={{a: {t / 'teacher'}, b: {t / 'student'}}}", "teacher.combine=mixture",
                            "objective.name=chunk_rkl", f"run.out={tmp_path / 'e'}"],
                           r"model\.teachers\.a .* another tokenizer .* mixture .* use it alone"),
        "teacher_prefixes": ([*xtok, "objective.name=chunk_rkl", "rollout.source=teacher", f"run.out={tmp_path / 'f'}"],
                             r"rollout\.source=teacher: the teacher has another tokenizer"),
        "probe": (["probe", "pair", *xtok[1:], "objective.name=chunk_rkl"],
                  r"probe pair needs a local teacher .* a teacher with another tokenizer"),
    }
    results = _run_cli({name: argv for name, (argv, _) in cases.items()}, tmp_path)
    import re
    for name, (_, pattern) in cases.items():
        code, stderr = results[name]["code"], results[name]["stderr"]
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("opdkit: error: "), (name, code, stderr)
        assert re.search(pattern, lines[0]), (name, lines[0])


def _tiny_run_args(t: Path) -> list[str]:
    return ["distill", f"model.student={t / 'student'}", f"model.teacher={t / 'teacher'}",
            f"data.train={t / 'train.jsonl'}", f"data.eval={t / 'train.jsonl'}", "optim.steps=2",
            "optim.prompts_per_step=4", "optim.micro_batch=2", "rollout.max_new_tokens=6", "run.progress=false",
            "run.threads=1", "run.eval_every=2", "run.eval_limit=4", "optim.lr=1e-3", "objective.chunk_rows=3"]


def _check_run(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in train)
    assert all(0.0 <= r["diag/align_single"] <= 1.0 and 0.0 < r["diag/align_shared"] <= 1.0 for r in train)
    evals = [r for r in rows if "eval/teacher_nll" in r]
    assert [r["step"] for r in evals] == [0, 2] and all(r["eval/teacher_nll"] > 0 for r in evals)
    assert list((out / "checkpoints").iterdir())


def test_tiny_cross_tokenizer_distill_end_to_end(xtok_dir, tmp_path):
    common = _tiny_run_args(xtok_dir)
    results = _run_cli({"chunk_rkl": [*common, "objective.name=chunk_rkl", f"run.out={tmp_path / 'chunk'}"],
                        "preflight": ["preflight", *common[1:], "objective.name=chunk_rkl"]}, tmp_path)
    assert all(r["code"] == 0 for r in results.values()), results
    _check_run(tmp_path / "chunk")


@pytest.mark.slow
def test_tiny_cross_tokenizer_shared_topk_and_a_slow_teacher_tokenizer(xtok_dir, tmp_path):
    common = _tiny_run_args(xtok_dir)
    cases = {"shared_topk": [*common, "objective.name=shared_topk", "objective.options={k: 5}",
                             f"run.out={tmp_path / 'topk'}"],
             "slow_teacher": [*common, f"model.teacher={xtok_dir / 'bytes'}", "objective.name=chunk_rkl",
                              f"run.out={tmp_path / 'bytes'}"]}
    results = _run_cli(cases, tmp_path)
    assert all(r["code"] == 0 for r in results.values()), results
    _check_run(tmp_path / "topk")
    _check_run(tmp_path / "bytes")


def test_which_objectives_a_cross_tokenizer_teacher_serves():
    from opdkit.objectives import describe
    from opdkit.objectives.capabilities import cross_tokenizer_problem
    works = [("chunk_rkl", {}), ("shared_topk", {}), ("topk_fkl_teacher", {}), ("topk_rkl", {"support": "teacher"}),
             ("topk_rkl_tail", {"support": "intersection"}), ("sft", {})]
    refused = [("rkl", {}), ("fkl", {}), ("jsd", {}), ("jsd_norm", {}), ("kl_mix", {}), ("sampled_rkl", {}),
               ("topk_rkl_tail", {}), ("topk_rkl", {"support": "union"}),
               ("topk_rkl", {"support": "teacher", "include_sampled": True})]
    assert all(cross_tokenizer_problem(n, o) is None for n, o in works)
    for name, options in refused:
        assert "chunk_rkl, topk_fkl_teacher, shared_topk" in cross_tokenizer_problem(name, options)
    lines = {line.split()[0]: line for line in describe().splitlines() if line and not line.startswith(" ")}
    assert "cross-tokenizer" in lines["chunk_rkl"] and "cross-tokenizer" not in lines["rkl"]
    assert "served top-k" in lines["sampled_rkl"] and "cross-tokenizer" not in lines["sampled_rkl"]
