"""Rollouts from vLLM inside the training process (import-guarded), same protocol as HFSampler.

    opdkit distill ... rollout.engine=vllm rollout.vllm_memory=0.3

`VLLMSampler.sample(model, prompts, ...) -> Rollouts` generates with a colocated `vllm.LLM`
built from model.student, one seed per request (so a row's sample does not depend on the
batch it is in), and records log mu(y_t) with `logprobs_mode="processed_logprobs"`, i.e.
after temperature and top-p: the behaviour policy the importance ratio needs.
After each optimizer step `sync_weights(model)` pushes the trainer's weights into the
engine (FSDP2 gathers them first: train.train_step calls it inside `full_weights`).

The sampler-vs-trainer mismatch: after generating, the trainer's own model scores the same
tokens (one no-grad forward, temperature applied, no top-p) and `metrics` holds
`rollout/logprob_mismatch` (token mean |log mu - log p|) and `rollout/logprob_mismatch_max`.
Kernels, bf16 rounding and a missed weight sync all show up there; with top_p < 1 the two
differ by design (log mu is renormalised over the nucleus).

vLLM is not a dependency: it ships its own CUDA torch build and would replace a CPU one.
Without it, building the sampler fails with one message; the GPU tests skip.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.models.forward import pack
from opdkit.models.rollout import HFSampler, Rollouts
from opdkit.objectives.logprobs import selective_log_softmax


class VLLMUnavailable(RuntimeError):
    """vllm (or a CUDA device) is missing."""


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise VLLMUnavailable("rollout.engine=vllm needs the vllm package and a CUDA GPU (pip install vllm brings its "
                              "own torch build); use rollout.engine=hf otherwise") from None
    if not torch.cuda.is_available():
        raise VLLMUnavailable("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on CPU")
    return vllm


@dataclass
class VLLMSampler:
    llm: object                           # vllm.LLM
    student: object                       # the trainer's module whose weights the engine holds
    eos_id: int
    pad_id: int
    metrics: dict = field(default_factory=dict)

    @classmethod
    def create(cls, model_dir: str, student, eos_id: int, pad_id: int, dtype: str = "bfloat16", memory: float = 0.3,
               max_model_len: int = 4096, seed: int = 0) -> "VLLMSampler":
        vllm = require_vllm()
        llm = vllm.LLM(model=str(model_dir), dtype=dtype, gpu_memory_utilization=memory, max_model_len=max_model_len,
                       seed=seed, logprobs_mode="processed_logprobs", enable_prefix_caching=False)
        return cls(llm, student, eos_id, pad_id)

    def sample(self, model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, greedy: bool = False, record_topk: int = 0) -> Rollouts:
        if model is not self.student:     # the teacher writing SFT traces or answering in eval: not in the engine
            return HFSampler(self.eos_id, self.pad_id).sample(model, prompts, max_new_tokens=max_new_tokens,
                                                              temperature=temperature, top_p=top_p, greedy=greedy,
                                                              record_topk=record_topk)
        from vllm import SamplingParams
        base = int(torch.randint(0, 2**31, ()))      # from the global RNG, which train.collect seeds per micro-batch
        params = [SamplingParams(n=1, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                 max_tokens=max_new_tokens, stop_token_ids=[self.eos_id], logprobs=max(1, record_topk),
                                 seed=base + i, skip_special_tokens=False) for i in range(len(prompts))]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        rollouts = rollouts_from_outputs(prompts, [o.outputs[0] for o in outputs], self.eos_id, record_topk)
        self.metrics = logprob_mismatch(model, rollouts, self.pad_id, 1.0 if greedy else temperature)
        return rollouts

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Load the trainer's current weights into the engine (names as in the HF checkpoint)."""
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        if hasattr(self.llm, "apply_model"):                     # vLLM >= 0.9
            self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        else:
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()


def rollouts_from_outputs(prompts: list[list[int]], completions: list, eos_id: int, record_topk: int) -> Rollouts:
    """Rollouts from vLLM CompletionOutputs (token_ids; logprobs: one {id: Logprob} per token)."""
    out = Rollouts([list(p) for p in prompts], [], [], [], [] if record_topk else None, [] if record_topk else None)
    for c in completions:
        ids = list(c.token_ids)
        out.response_ids.append(ids)
        out.sampler_logprobs.append(torch.tensor([c.logprobs[j][t].logprob for j, t in enumerate(ids)]))
        out.finished.append(bool(ids) and ids[-1] == eos_id)
        if record_topk:
            ranked = [sorted(d.items(), key=lambda kv: kv[1].rank)[:record_topk] for d in c.logprobs]
            out.topk_ids.append(torch.tensor([[t for t, _ in row] for row in ranked], dtype=torch.long))
            out.topk_logprobs.append(torch.tensor([[lp.logprob for _, lp in row] for row in ranked]))
    return out


@torch.no_grad()
def logprob_mismatch(model, rollouts: Rollouts, pad_id: int, temperature: float) -> dict:
    """Token mean and max of |log mu(y) - log p(y)| between the sampler and the trainer's model."""
    if not any(rollouts.response_ids):
        return {}
    device = next(model.parameters()).device
    gaps = []
    for prompt, response, logmu in zip(rollouts.prompt_ids, rollouts.response_ids, rollouts.sampler_logprobs):
        if not response:
            continue
        packed = pack([prompt], [response], pad_id, device)           # one row: (L, V) logits at a time
        logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).logits[0]   # (L, V)
        scored = logits[packed.positions[0]] / temperature                                         # (R, V)
        gaps.append((logmu.to(device) - selective_log_softmax(scored, packed.response_ids[0])).abs())
    gap = torch.cat(gaps)
    return {"rollout/logprob_mismatch": float(gap.mean()), "rollout/logprob_mismatch_max": float(gap.max())}
