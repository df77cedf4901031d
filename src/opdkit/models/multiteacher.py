"""Several teachers behind the one teacher interface: `model.teachers`, routed or mixed per token.

    model: {teachers: {math: models/math, code: models/code, rules: self}}
    teacher: {combine: route, route_field: teacher}          # each example names its teacher
    teacher: {combine: mixture, weights: {math: 2, code: 1}}  # every token: a weighted geometric mean

`MultiTeacher.score` returns one `TeacherScores`, like any teacher, so objectives, the
chunked path and the training step do not know there are several. Both modes are one lazy
`Head`: a teacher's logits are h_i W_i^T / T_i (+ b_i / T_i), so any row-wise combination
sum_i c_ri * logits_i is the linear head [c_r1 h_1/T_1, ..., c_r1/T_1, ...] @ [W_1, ..., b_1, ...]^T
over the concatenated hidden axis. Routing uses one-hot c_r (row r gets exactly its teacher's
logits); the mixture uses c_ri = w_i / sum w, whose log-softmax is the renormalised weighted
geometric mean prod_i q_i^{w_i} / Z (the log Z_i of each teacher cancels in the renormalisation).
No (N, T, V) tensor is made and the chunked objective resolves it one row chunk at a time.

Why geometric: sum_i w_i KL(p || q_i) = KL(p || q_geo) - log Z (weights summing to 1), so
reverse-KL distillation into q_geo follows the weighted sum of the per-teacher reverse KLs,
the objective OPD optimises for one teacher; its minimiser over p is q_geo. It is also the
consensus OPSD's self-teachers reach: a student distilled by RKL from the same model under
several PIs converges to the normalised product of those conditionals. The arithmetic mean
sum w_i q_i is instead the minimiser of the forward KLs (mass-covering: it keeps every
teacher's modes, including the ones only one teacher believes).

Members are local (a model directory or `self`: the student shown PI) or served
({url, model}). A served teacher returns only its top-k, from which neither a full mixture nor
the shared head can be built; routed, it needs neither: the whole batch is then scored as
top-k (`MultiTeacher.top_k_scores`; a local member's top-k made from its full log-probs), and
the objective must take a top-k-only teacher (`served_problem`). A teacher with another tokenizer
would be a member whose `score` already returns scores at the student's tokens (issue 16,
part 3); routing needs nothing more, a mixture needs its scores over the student's vocabulary.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from opdkit.errors import ConfigError, DataError
from opdkit.models.loading import PairReport, load_model, load_tokenizer, other_tokenizer, preflight
from opdkit.models.rollout import Rollouts
from opdkit.models.served import ServedTeacher, served_problem
from opdkit.models.teachers import ModelTeacher, PromptRenderer, SelfTeacher
from opdkit.objectives.scores import Head, TeacherScores, top_k_only
from opdkit.tasks.data import Example

COMBINES = ("route", "mixture")
SELF = "self"
NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class TeacherSettings:
    """What the several-teacher code reads from the config, as values."""

    paths: dict           # name -> local path or 'self'
    combine: str          # route | mixture
    route_field: str      # data key naming each example's teacher (route)
    weights: dict         # name -> mixture weight (mixture; missing names weigh 1)

    @classmethod
    def from_config(cls, cfg) -> "TeacherSettings":
        return cls(dict(cfg.model.teachers), cfg.teacher.combine, cfg.teacher.route_field, dict(cfg.teacher.weights))

    def normalised_weights(self) -> dict[str, float]:
        raw = {name: float(self.weights.get(name, 1.0)) for name in self.paths}
        total = sum(raw.values())
        return {name: w / total for name, w in raw.items()}


def check_teachers(s: TeacherSettings, mode: str, source: str, has_teacher: bool, url: str, has_pi: bool) -> str | None:
    """Why the several-teacher settings cannot run; None when they can (called at config load)."""
    if not s.paths:
        return "teacher.weights needs model.teachers" if s.weights else None
    if mode != "distill":
        return f"model.teachers is for `distill` (got `{mode}`); self-distill has one self-teacher"
    if has_teacher or url:
        return "set model.teachers or model.teacher/teacher.url, not both"
    for name, path in s.paths.items():
        if not NAME.match(str(name)):
            return f"model.teachers: name {name!r} must be letters, digits, '_' or '-'"
        problem = served_problem(name, path, s.combine, source) if isinstance(path, dict) else None
        if problem:
            return problem
        if isinstance(path, dict):
            continue
        if not isinstance(path, str) or not path:
            return f"model.teachers.{name} must be a local model path, 'self' or {{url: URL, model: NAME}}, got {path!r}"
        if path.startswith(("http://", "https://")):
            return (f"model.teachers.{name} is a URL ({path}): write a served teacher as {{url: {path}, model: NAME}} "
                    f"(NAME: the model the server serves); it can only be routed (teacher.combine=route)")
    if SELF in s.paths.values() and not has_pi:
        return "model.teachers has 'self' (the student shown PI), which needs data.pi or a data.pi_field"
    if s.combine == "route":
        if s.weights:
            return "teacher.weights applies to teacher.combine=mixture; routed examples use their own teacher"
        if not s.route_field:
            return "teacher.combine=route needs teacher.route_field (the data key naming each example's teacher)"
        return None
    unknown = sorted(set(s.weights) - set(s.paths))
    if unknown:
        return f"teacher.weights names {unknown}, which are not in model.teachers ({', '.join(s.paths)})"
    values = [s.weights.get(n, 1.0) for n in s.paths]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in values):
        return f"teacher.weights must be numbers >= 0, got {s.weights}"
    if not sum(values) > 0:
        return f"teacher.weights must sum to a positive number, got {s.weights}"
    if source != "student":
        return (f"rollout.source={source} with teacher.combine=mixture: sampling from a product of teachers is not "
                f"implemented; route the teachers or use rollout.source=student")
    return None


def check_routes(examples: list[Example], names: list[str], path: str) -> None:
    """Every example names a configured teacher (DataError otherwise, naming the example and the fix)."""
    for i, e in enumerate(examples, 1):
        if e.teacher not in names:
            what = "names no teacher" if e.teacher is None else f"names teacher {e.teacher!r}"
            raise DataError(f"{path}: example {i} {what}, which is not in model.teachers ({', '.join(names)}); "
                            f"add it there or fix the example's teacher field")


def build_members(cfg, student, tokenizer, vocab: int) -> tuple[dict, PairReport]:
    """Each configured teacher, preflighted against the student (problems named per teacher), and one report:
    the smallest shared vocabulary, every teacher's masked special ids and notes."""
    d, t = cfg.data, cfg.teacher
    members, report = {}, PairReport(vocab=vocab)
    for name, path in cfg.model.teachers.items():
        if isinstance(path, dict):            # served: the student's tokenizer renders its prompt (ids go as they are)
            renderer = PromptRenderer(tokenizer, d.system_prompt, d.pi, d.pi_placement, with_pi=True)
            members[name] = ServedTeacher(path["url"], path["model"], renderer, t.top_k, t.temperature)
            continue
        if path == SELF:
            renderer = PromptRenderer(tokenizer, d.system_prompt, d.pi, d.pi_placement, with_pi=True)
            members[name] = SelfTeacher(student, renderer, tokenizer.pad_token_id, vocab, t.self_weights, t.ema_decay,
                                        t.temperature)
            continue
        teacher_tok = load_tokenizer(path)
        if other_tokenizer(tokenizer, teacher_tok):
            raise ConfigError(
                f"model.teachers.{name} ({path}) has another tokenizer than the student: "
                + ("a mixture is a geometric mean over the student's vocabulary, which such a teacher cannot score"
                   if cfg.teacher.combine == "mixture" else "routing shares one lm-head over the student's vocabulary, "
                   "which such a teacher does not have") + "; use it alone as model.teacher (cross-tokenizer OPD)")
        model = load_model(path, cfg.model.teacher_dtype or cfg.model.dtype)
        pair = preflight(tokenizer, teacher_tok, student, model, cfg.model.teacher_template)
        pair.problems = [f"teacher {name!r}: {p}" for p in pair.problems]
        pair.raise_if_bad()
        template_tok = tokenizer if cfg.model.teacher_template == "student" else teacher_tok
        renderer = PromptRenderer(template_tok, d.system_prompt, d.pi, d.pi_placement, with_pi=True,
                                  plain=cfg.model.teacher_template == "plain")
        members[name] = (model, renderer)
        report.vocab = min(report.vocab, pair.vocab)
        report.masked_special_ids = sorted(set(report.masked_special_ids) | set(pair.masked_special_ids))
        report.notes += [f"teacher {name!r}: {n}" for n in pair.notes]
    for name, member in members.items():          # the shared vocabulary is known only now
        if isinstance(member, tuple):
            members[name] = ModelTeacher(member[0], member[1], tokenizer.pad_token_id, report.vocab, t.temperature)
        elif isinstance(member, SelfTeacher):
            member.vocab = report.vocab
    return members, report


def build_multi_teacher(cfg, student, tokenizer, vocab: int) -> tuple["MultiTeacher", PairReport]:
    members, report = build_members(cfg, student, tokenizer, vocab)
    settings = TeacherSettings.from_config(cfg)
    teacher = MultiTeacher(members, settings.combine, settings.normalised_weights(), cfg.teacher.top_k)
    if teacher.provides == "top-k" and not 0 < cfg.teacher.top_k <= report.vocab:
        raise ConfigError(f"teacher.top_k={cfg.teacher.top_k}: with a served member every routed row is scored by "
                          f"its top-k, which must lie in 1..{report.vocab} (the scored vocabulary)")
    return teacher, report


class MultiTeacher:
    """Several teachers as one: routed by `Example.teacher`, or a weighted geometric mixture of local ones."""

    provides = "full"

    def __init__(self, members: dict, combine: str, weights: dict[str, float] | None = None, top_k: int = 0):
        self.members, self.combine = members, combine
        self.weights = weights or {}
        # a served member (routed only) returns its top-k: then every row is scored as top-k (teacher.top_k)
        self.provides = "top-k" if any(m.provides == "top-k" for m in members.values()) else "full"
        self.top_k = top_k
        self.configured = dict(self.weights)         # the mixture's weights before any drop
        self.dropped: tuple[str, ...] = ()           # members the guard stopped using (drop_teacher)

    def member_weights(self) -> dict[str, float]:
        """Each configured member's weight as the guard's drop plan reads it (1 each when routed)."""
        return {name: 1.0 if self.combine == "route" else self.configured[name] for name in self.members}

    def drop(self, names) -> None:
        """Stop using the members `names` (the run's dropped teachers, in full). A mixture renormalises the
        other weights; a routed member's examples carry no loss from now on (`kept_rows`), though it still
        scores them (evaluation's per-teacher KL keeps watching it)."""
        self.dropped = tuple(names)
        if self.combine == "mixture":
            left = {name: w for name, w in self.configured.items() if name not in self.dropped}
            total = sum(left.values())
            self.weights = {name: left.get(name, 0.0) / total for name in self.configured}

    def member_name(self, example: Example) -> str:
        return example.teacher

    @property
    def renderer(self):
        """The prompt a routed example's teacher sees; for a mixture, the first member's."""
        if self.combine == "route":
            return lambda example: self.members[example.teacher].renderer(example)
        return next(iter(self.members.values())).renderer

    def model(self):
        """None: there is no single model (routed rows are written per member: `opdkit.engine.prefix.writers`)."""
        return None

    def context(self):
        return contextlib.nullcontext()        # each member enters its own context when it scores

    def score(self, examples: list[Example], responses: list[list[int]]) -> TeacherScores:
        width = max(1, max(len(r) for r in responses))
        if self.combine == "route":
            groups = {name: [i for i, e in enumerate(examples) if e.teacher == name] for name in self.members}
        else:
            groups = {name: list(range(len(examples))) for name in self.members}
        if self.provides == "top-k":
            return self.top_k_scores(groups, examples, responses, width)
        heads, coefficients = {}, {}
        for name, rows in groups.items():
            weight = 1.0 if self.combine == "route" else self.weights[name]
            if not rows or weight == 0:
                continue
            member = self.members[name]
            heads[name] = member.score([examples[i] for i in rows], [responses[i] for i in rows]).head
            coefficients[name] = (rows, weight)
        return TeacherScores(head=block_head(heads, coefficients, len(examples), width))

    def top_k_scores(self, groups: dict, examples: list[Example], responses: list[list[int]], width: int) -> TeacherScores:
        """Routed teachers, one of them served: each row's top-k ids and log-probs and the sampled token's
        log-prob (a local member's made from its full log-probs, one row at a time)."""
        n, k = len(examples), self.top_k
        ids, sampled = torch.zeros(n, width, k, dtype=torch.long), torch.zeros(n, width)
        logprobs = torch.full((n, width, k), -1e4)            # finite: padded positions are masked anyway
        for name, rows in groups.items():
            if not rows:
                continue
            mine = [responses[i] for i in rows]
            scores = self.members[name].score([examples[i] for i in rows], mine)
            if scores.topk_ids is None:
                r = max(1, max(len(x) for x in mine))
                scores = top_k_only(scores, torch.tensor([x + [0] * (r - len(x)) for x in mine]), k)
            index, r = torch.tensor(rows), scores.topk_ids.shape[1]
            ids[index, :r] = scores.topk_ids.cpu()
            logprobs[index, :r] = scores.topk_logprobs.float().cpu()
            sampled[index, :r] = scores.sampled_logprobs.float().cpu()
        return TeacherScores(topk_ids=ids, topk_logprobs=logprobs, sampled_logprobs=sampled)

    def after_step(self, student) -> None:
        for member in self.members.values():
            member.after_step(student)

    def checkpoint_modules(self) -> dict:
        return {f"{key}-{name}": module for name, member in self.members.items()
                for key, module in member.checkpoint_modules().items()}


def local_models(teacher) -> list:
    """Every local model behind `teacher` (each member's for several teachers; none for a served one)."""
    if teacher is None:
        return []
    members = getattr(teacher, "members", None)
    models = [m.model() for m in members.values()] if members is not None else [teacher.model()]
    return [m for m in models if m is not None]


def kept_rows(teacher, examples: list[Example]) -> list[bool] | None:
    """Routed teachers some of which the guard dropped: whether each example still carries loss; None
    when every example does (one teacher, a mixture, nothing dropped)."""
    dropped = getattr(teacher, "dropped", ())
    if not dropped or teacher.combine != "route":
        return None
    return [e.teacher not in dropped for e in examples]


def member_rollouts(teacher, sampled: Rollouts) -> dict[str, tuple[object, Rollouts]]:
    """Several teachers: {name: (member, the rows it scores)}: each local teacher's routed rows (route) or
    every row (mixture); members without rows, and served members, are left out. {} for one teacher."""
    members = getattr(teacher, "members", None)
    out = {}
    for name, member in (members or {}).items():
        if member.provides != "full":         # a served member: no full log-probs to measure KL with
            continue
        rows = [i for i, e in enumerate(sampled.meta) if teacher.combine == "mixture" or e.teacher == name]
        if rows:
            pick = lambda values: [values[i] for i in rows]       # noqa: E731
            out[name] = (member, Rollouts(pick(sampled.prompt_ids), pick(sampled.response_ids),
                                          pick(sampled.sampler_logprobs), pick(sampled.finished), meta=pick(sampled.meta)))
    return out


def member_kls(teacher, sampled: Rollouts, kl) -> dict[str, float]:
    """Several teachers: {'teacher_kl/<name>': kl(member, its rows)}, on each teacher's routed rows
    (route) or on every row (mixture); {} for one teacher."""
    return {f"teacher_kl/{name}": kl(member, rows) for name, (member, rows) in member_rollouts(teacher, sampled).items()}


PER_TEACHER = ("loss", "overlap", "teacher_entropy", "student_entropy", "negative_reward", "teacher_logprob")


def per_teacher_sums(teacher, examples: list[Example], result, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Routed teachers: masked sums of per-token values over each teacher's rows, and its token count
    ("teacher/<name>/<key>", "teacher/<name>/tokens"); {} for anything else."""
    if getattr(teacher, "combine", None) != "route":
        return {}
    values = {"loss": result.per_token, **result.metrics}
    out = {}
    for name in teacher.members:
        rows = torch.tensor([e.teacher == name for e in examples], dtype=mask.dtype, device=mask.device)
        own = mask * rows.unsqueeze(-1)
        out[f"teacher/{name}/tokens"] = own.sum()
        out.update({f"teacher/{name}/{k}": (values[k] * own).sum() for k in PER_TEACHER if k in values})
    return out


def per_teacher_means(token_means: dict[str, float]) -> dict[str, float]:
    """Turn the step's per-teacher sums (already divided by the step's tokens) into each teacher's own
    token means, and its token count into `teacher/<name>/share` (its share of the step's tokens)."""
    shares = {k[:-len("/tokens")]: v for k, v in token_means.items() if k.startswith("teacher/") and k.endswith("/tokens")}
    out = {}
    for key, value in token_means.items():
        prefix = key.rsplit("/", 1)[0]
        if prefix in shares and not key.endswith("/tokens"):
            out[key] = value / shares[prefix] if shares[prefix] > 0 else float("nan")
        elif prefix not in shares:
            out[key] = value
    out.update({f"{prefix}/share": share for prefix, share in shares.items()})
    return out


def block_head(heads: dict[str, Head], coefficients: dict[str, tuple[list[int], float]], n: int, width: int) -> Head:
    """One Head whose logits at row r are sum_i c_ri * (h_i W_i^T + b_i) / T_i over the members i.

    heads[i].hidden is (len(rows_i), R_i, H_i) for the rows listed in coefficients[i] (with
    weight c); every other row has c_ri = 0. Biases become a constant input column each.
    """
    dtype = torch.promote_types(*[h.weight.dtype for h in heads.values()]) if len(heads) > 1 else \
        next(iter(heads.values())).weight.dtype
    device = next(iter(heads.values())).weight.device
    sizes = [h.hidden.shape[-1] + (h.bias is not None) for h in heads.values()]
    hidden = torch.zeros(n, width, sum(sizes), dtype=dtype, device=device)
    weights, offset = [], 0
    for (name, head), size in zip(heads.items(), sizes):
        rows, c = coefficients[name]
        index = torch.tensor(rows, device=device)
        h = head.hidden.shape[-1]
        scale = c / head.temperature
        hidden[index, :head.hidden.shape[1], offset:offset + h] = head.hidden.to(dtype) * scale
        weights.append(head.weight.to(dtype))
        if head.bias is not None:
            hidden[index, :, offset + h] = scale
            weights.append(head.bias.to(dtype).unsqueeze(-1))
        offset += size
    return Head(hidden, torch.cat(weights, dim=-1), None, 1.0)
