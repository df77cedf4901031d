"""Model shapes, memory plan and offline model directories for benchmarks/gpu_check.py.

The GPU machine has no network and no weights (64 MiB travel limit), so the models are
randomly initialised from the published configs' shapes (weights do not change cost):
`opdkit.scale.scaling`'s Qwen3-8B / Qwen3-1.7B, and Qwen3-4B / Qwen3-0.6B as the fallback pair.
The tokenizer is a word-level one built here with exactly the models' vocabulary (151,936
ids), so opdkit scores over the full vocabulary. `plan_memory` sizes a run on paper before
anything is allocated; `choose_pair` takes the largest pair that fits.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from opdkit.scale.scaling import QWEN3_1_7B, QWEN3_8B, Arch

# Published Qwen/Qwen3-4B and Qwen/Qwen3-0.6B config.json shapes (both tie embeddings).
QWEN3_4B = Arch("Qwen3-4B", hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, mlp=9728, vocab=151936, tied=True)
QWEN3_0_6B = Arch("Qwen3-0.6B", hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, mlp=3072, vocab=151936,
                  tied=True)
PAIRS = [(QWEN3_8B, QWEN3_1_7B), (QWEN3_4B, QWEN3_0_6B)]          # (teacher, student), largest first
# --dry-run: the same code at sizes a CPU runs in seconds (Qwen3 architecture, tiny dims).
TINY_TEACHER = Arch("tiny-teacher", hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16, mlp=128, vocab=2048, tied=False)
TINY_STUDENT = Arch("tiny-student", hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, mlp=64, vocab=2048, tied=True)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "user", "assistant", "system"]
CHATML = ("{% for message in messages %}{{ '<|im_start|> ' + message['role'] + ' ' + message['content'] + ' <|im_end|> ' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}{% endif %}")
GIB = 2 ** 30


def hf_config(arch: Arch, eos: int, pad: int):
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.mlp,
                       num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
                       head_dim=arch.head_dim, tie_word_embeddings=arch.tied, max_position_embeddings=4096,
                       eos_token_id=eos, pad_token_id=pad, bos_token_id=None)


def build_tokenizer(vocab: int):
    """A word-level ChatML tokenizer with exactly `vocab` ids: specials, then w<i> words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = {t: i for i, t in enumerate(SPECIALS)}
    words.update({f"w{i}": i for i in range(len(SPECIALS), vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]")
    fast.chat_template = CHATML
    return fast


def write_model_dir(directory: Path, arch: Arch, tokenizer) -> Path:
    """config.json + tokenizer only: the weights are made on the device by `random_model`."""
    directory.mkdir(parents=True, exist_ok=True)
    hf_config(arch, tokenizer.eos_token_id, tokenizer.pad_token_id).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "arch.json").write_text(json.dumps(vars(arch)))
    return directory


def random_model(directory: str | Path, dtype, device: str):
    """A randomly initialised AutoModelForCausalLM from `directory`'s config, built on `device` (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    config = AutoConfig.from_pretrained(directory)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return model.eval()


def prompt_texts(n: int, words: int, vocab: int, seed: int = 0) -> list[str]:
    """`n` prompts of `words` random vocabulary words each (one token per word)."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(len(SPECIALS), vocab)}" for _ in range(words)) for _ in range(n)]


def plan_memory(teacher: Arch, student: Arch, batch: int, prompt: int, response: int, chunk_rows: int = 110,
                optimizer_bytes: int = 8) -> dict[str, float]:
    """GiB of each part of one opdkit step in bf16 (student bf16 weights, grads and AdamW moments: 8 B/param).

    Activations: ~34 B x H per token per layer without checkpointing (Korthikanti et al.), for the
    student's training forward; the teacher's no-grad forward holds a few layers' worth.
    """
    tokens = batch * (prompt + response)
    parts = {
        "teacher weights bf16": teacher.params() * 2,
        "student weights + grads + AdamW (bf16)": student.params() * optimizer_bytes,
        "student activations (no checkpointing)": tokens * student.hidden * 34 * student.layers,
        "teacher forward working set": tokens * teacher.hidden * 34 * 2,
        "KV cache for the rollout": tokens * student.kv_bytes_per_token(),
        "chunked objective buffers (fp32)": 4 * chunk_rows * student.vocab * 4 + student.vocab * student.hidden * 4,
        "final hidden states (student + teacher)": batch * response * (student.hidden + teacher.hidden) * 2,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def choose_pair(free_gib: float, batch: int, prompt: int, response: int, margin: float = 1.25):
    """The largest (teacher, student, plan) whose planned total x margin fits `free_gib`, else None."""
    for teacher, student in PAIRS:
        plan = plan_memory(teacher, student, batch, prompt, response)
        if plan["total"] * margin <= free_gib:
            return teacher, student, plan
    return None
