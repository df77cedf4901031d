"""Memory and time of an OPD run on paper, from the models' published configs.

    python -m opdkit.scaling                    # Qwen3-8B teacher -> Qwen3-1.7B student on 8 x H100
    python -m opdkit.scaling --gpus 16 --tokens-per-gpu 32768

Every number is derived from config fields (hidden size, layers, heads, MLP width, vocab)
and the stated hardware peaks; nothing here is measured. docs/scaling.md walks through the
same arithmetic by hand. Bytes are decimal GB (1e9) unless a name says GiB.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """The config.json fields that fix a dense decoder's size (Qwen3 / Llama family)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int                  # intermediate_size
    vocab: int
    tied: bool                # tie_word_embeddings
    qk_norm: bool = True      # Qwen3 normalises q and k per head (Llama does not)

    def layer_params(self) -> int:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)   # input/post-attention RMSNorm, q/k norm
        return q_o + k_v + 3 * self.hidden * self.mlp + norms

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params() + self.hidden

    def matmul_params(self) -> int:
        """Parameters a token multiplies through: the layers and the lm-head (not the lookup)."""
        return self.layers * self.layer_params() + self.vocab * self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def attention_flops_per_token(self, context: int) -> int:
        """Forward score and value matmuls against `context` earlier tokens: 2 x 2 x L x heads x d x ctx."""
        return 4 * self.layers * self.heads * self.head_dim * context


# From the published Hugging Face configs (Qwen/Qwen3-8B, Qwen/Qwen3-1.7B).
QWEN3_8B = Arch("Qwen3-8B", hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, mlp=12288, vocab=151936, tied=False)
QWEN3_1_7B = Arch("Qwen3-1.7B", hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, mlp=6144, vocab=151936, tied=True)

H100 = {"bf16_tflops": 989.0, "hbm_tb_s": 3.35, "hbm_gb": 80.0}      # SXM, dense bf16 peak, no sparsity


@dataclass(frozen=True)
class Plan:
    gpus: int = 8
    tokens_per_gpu: int = 16384        # prompt + response tokens one GPU trains on per optimizer step
    context: int = 2048                # sequence length (prompt + response)
    chunk_bytes: int = 64 << 20        # opdkit's chunked objective buffer (logprobs.default_chunk_size)
    mfu: float = 0.4                   # assumed fraction of the bf16 peak reached by training matmuls
    decode_batch: int = 128            # sequences decoded together per GPU by the rollout engine


def memory(teacher: Arch, student: Arch, plan: Plan) -> dict[str, float]:
    """Per-GPU bytes (GB) of each part of the run."""
    n = student.params()
    gb = 1e9
    rows = max(1, plan.chunk_bytes // (student.vocab * 4))
    return {
        "teacher weights bf16, replicated": teacher.params() * 2 / gb,
        "teacher weights bf16, FSDP-sharded": teacher.params() * 2 / plan.gpus / gb,
        "student fp32 master + fp32 grads + AdamW m, v (16 B/param), FSDP-sharded": n * 16 / plan.gpus / gb,
        "student bf16 compute copy of one layer (all-gathered)": student.layer_params() * 2 / gb,
        "student bf16 embeddings/lm-head (root, gathered fwd->bwd)": student.vocab * student.hidden * 2 / gb,
        "activations, checkpointed: layer inputs (2 B x H x L per token)":
            plan.tokens_per_gpu * student.hidden * student.layers * 2 / gb,
        "activations, one layer recomputed (34 B x H per token, flash attention)":
            plan.tokens_per_gpu * student.hidden * 34 / gb,
        "activations without checkpointing (34 B x H x L per token)":
            plan.tokens_per_gpu * student.hidden * 34 * student.layers / gb,
        "final hidden states student + teacher (bf16, all tokens)":
            plan.tokens_per_gpu * (student.hidden + teacher.hidden) * 2 / gb,
        f"logits per chunk ({rows} rows x V fp32, student + teacher)": 2 * rows * student.vocab * 4 / gb,
        "full (tokens, V) fp32 logits, for comparison (never built)": plan.tokens_per_gpu * student.vocab * 4 / gb,
        "rollout KV cache per token (student, bf16), MB": student.kv_bytes_per_token() / 1e6,
        "rollout KV cache for decode_batch x context": plan.decode_batch * plan.context * student.kv_bytes_per_token() / gb,
    }


def step_time(teacher: Arch, student: Arch, plan: Plan, response_tokens_per_gpu: int) -> dict[str, float]:
    """Seconds per optimizer step on one GPU (all GPUs work in parallel on their shard)."""
    peak = H100["bf16_tflops"] * 1e12 * plan.mfu
    attn_s = student.attention_flops_per_token(plan.context // 2)     # mean causal context
    attn_t = teacher.attention_flops_per_token(plan.context // 2)
    train_flops = plan.tokens_per_gpu * (8 * student.matmul_params() + 4 * attn_s)   # fwd + bwd + recompute fwd
    teacher_flops = plan.tokens_per_gpu * (2 * teacher.matmul_params() + attn_t)
    # Decoding is bound by HBM reads: every step reads the weights once and each sequence's KV cache.
    step_bytes = student.params() * 2 + plan.decode_batch * (plan.context // 2) * student.kv_bytes_per_token()
    decode_step_s = step_bytes / (H100["hbm_tb_s"] * 1e12)
    steps = response_tokens_per_gpu / plan.decode_batch
    return {
        "student train GFLOP/token (8N + attention)": train_flops / plan.tokens_per_gpu / 1e9,
        "teacher score GFLOP/token (2N + attention)": teacher_flops / plan.tokens_per_gpu / 1e9,
        "train s (at mfu)": train_flops / peak,
        "teacher s (at mfu)": teacher_flops / peak,
        "decode ms per step (HBM bound)": decode_step_s * 1e3,
        "rollout tokens/s per GPU (HBM bound)": plan.decode_batch / decode_step_s,
        "rollout s": steps * decode_step_s,
    }


def report(teacher: Arch = QWEN3_8B, student: Arch = QWEN3_1_7B, plan: Plan = Plan()) -> str:
    lines = [f"{a.name}: {a.params() / 1e9:.3f} B params ({a.layers * a.layer_params() / 1e9:.3f} B non-embedding), "
             f"{a.layer_params() / 1e6:.2f} M per layer" for a in (teacher, student)]
    lines.append(f"\nper GPU, {plan.gpus} GPUs, {plan.tokens_per_gpu} tokens/GPU/step, context {plan.context}:")
    lines += [f"  {k:<78} {v:8.2f}" for k, v in memory(teacher, student, plan).items()]
    response = plan.tokens_per_gpu // 2
    lines.append(f"\ntime per step, half of the tokens sampled ({response} per GPU), mfu {plan.mfu}:")
    lines += [f"  {k:<78} {v:10.2f}" for k, v in step_time(teacher, student, plan, response).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=Plan.gpus)
    p.add_argument("--tokens-per-gpu", type=int, default=Plan.tokens_per_gpu)
    p.add_argument("--context", type=int, default=Plan.context)
    p.add_argument("--mfu", type=float, default=Plan.mfu)
    p.add_argument("--decode-batch", type=int, default=Plan.decode_batch)
    a = p.parse_args(argv)
    print(report(plan=Plan(a.gpus, a.tokens_per_gpu, a.context, mfu=a.mfu, decode_batch=a.decode_batch)))


if __name__ == "__main__":
    main()
