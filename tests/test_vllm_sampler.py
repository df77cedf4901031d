"""The vLLM sampler: its output parsing and mismatch metric on CPU; the engine itself on a GPU.

GPU tests (`-m gpu`) need CUDA and the vllm package and skip cleanly without them.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from opdkit.models.rollout import HFSampler
from opdkit.models.vllm_sampler import logprob_mismatch, rollouts_from_outputs


@pytest.fixture(scope="module")
def tiny():
    from opdkit.lab.tiny import build_model, build_tokenizer
    tok = build_tokenizer()
    return build_model(tok, layers=2, seed=3), tok


def test_completion_outputs_become_rollouts():
    lp = lambda x, r: SimpleNamespace(logprob=x, rank=r)
    # vLLM CompletionOutput: token_ids and one {id: Logprob} per generated token (top-k + the sampled token)
    done = SimpleNamespace(token_ids=[4, 9], logprobs=[{4: lp(-0.2, 1), 8: lp(-1.9, 2)}, {9: lp(-3.0, 4), 2: lp(-0.1, 1),
                                                                                         5: lp(-2.0, 2)}])
    cut = SimpleNamespace(token_ids=[7], logprobs=[{7: lp(-0.5, 1), 3: lp(-1.0, 2)}])
    out = rollouts_from_outputs([[1, 2], [3]], [done, cut], eos_id=9, record_topk=2)
    assert out.response_ids == [[4, 9], [7]] and out.finished == [True, False]
    torch.testing.assert_close(out.sampler_logprobs[0], torch.tensor([-0.2, -3.0]))
    assert out.topk_ids[0].tolist() == [[4, 8], [2, 5]]                   # by rank; the rank-4 sampled token left out


def test_mismatch_is_zero_for_the_sampling_model_and_not_for_another_temperature(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    prompts = [tok("what is 2 plus 3?")["input_ids"], tok("hola")["input_ids"]]
    rollouts = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, prompts, max_new_tokens=6, temperature=0.7)
    same = logprob_mismatch(model, rollouts, tok.pad_token_id, temperature=0.7)
    assert same["rollout/logprob_mismatch_max"] < 1e-4
    other = logprob_mismatch(model, rollouts, tok.pad_token_id, temperature=1.0)
    assert other["rollout/logprob_mismatch"] > 1e-2


def test_engine_vllm_without_vllm_is_one_clear_error(tiny_dir, tmp_path):
    try:
        import vllm  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("vllm and a GPU are present")
    except ImportError:
        pass
    from conftest import engine_overrides

    from opdkit.engine.config import load_config
    from opdkit.engine.session import build_session
    from opdkit.errors import ConfigError
    with pytest.raises(ConfigError, match="rollout.engine=vllm needs"):
        build_session(load_config("sft", None, engine_overrides(tiny_dir, tmp_path, **{"rollout.engine": "vllm"})))


# ----------------------------------------------------------------------------- GPU (vllm)

def _gpu_sampler(tiny_dir):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from opdkit.models.loading import load_model, load_tokenizer
    from opdkit.models.vllm_sampler import VLLMSampler
    tok = load_tokenizer(str(tiny_dir / "student"))
    model = load_model(str(tiny_dir / "student"), "bfloat16").cuda()
    sampler = VLLMSampler.create(str(tiny_dir / "student"), model, tok.eos_token_id, tok.pad_token_id, "bfloat16", 0.2,
                                 max_model_len=512)
    return sampler, model, tok


@pytest.mark.gpu
def test_vllm_logprobs_agree_with_hf_and_weight_sync_follows_the_trainer(tiny_dir):
    sampler, model, tok = _gpu_sampler(tiny_dir)
    prompts = [tok(f"what is {i} plus 2?")["input_ids"] for i in range(16)]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rollouts = sampler.sample(model, prompts, max_new_tokens=32, temperature=1.0)
    seconds = time.perf_counter() - t0
    tokens = sum(map(len, rollouts.response_ids))
    print(f"vllm bf16: {tokens} tokens in {seconds:.3f} s = {tokens / seconds:.0f} tokens/s; "
          f"mismatch {sampler.metrics}")
    assert sampler.metrics["rollout/logprob_mismatch"] < 0.05          # bf16 kernels differ, the weights agree
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)                                                   # the trainer moved
    sampler.sample(model, prompts, max_new_tokens=8, temperature=1.0)
    stale = sampler.metrics["rollout/logprob_mismatch"]
    sampler.sync_weights(model)
    sampler.sample(model, prompts, max_new_tokens=8, temperature=1.0)
    assert sampler.metrics["rollout/logprob_mismatch"] < min(0.05, stale / 4), (stale, sampler.metrics)


def test_other_models_than_the_engines_student_are_sampled_by_hf(tiny):
    from opdkit.models.vllm_sampler import VLLMSampler
    model, tok = tiny
    sampler = VLLMSampler(llm=None, student=object(), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    prompts = [tok("hola")["input_ids"]]
    torch.manual_seed(5)
    got = sampler.sample(model, prompts, max_new_tokens=5, greedy=True)      # llm=None: vLLM is never touched
    want = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, prompts, max_new_tokens=5, greedy=True)
    assert got.response_ids == want.response_ids and len(got.response_ids[0]) > 0
