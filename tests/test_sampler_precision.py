"""A low-precision rollout copy is a behaviour policy: exact enumeration on a tiny real HF model.

The trainer pi is a float64 LlamaForCausalLM; the sampler mu is its `LowPrecisionCopy` in bf16
(the `rollout.sampler_dtype` code path). Over every response y in V^T the expected gradient of
opdkit's sampled-token RKL is computed in closed form, once under pi without a correction and
once under mu with the importance ratio the objective applies (behaviour_logprobs = log mu).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from opdkit.models.rollout import LowPrecisionCopy
from opdkit.objectives import ObjectiveInputs, TeacherScores, make_objective

V, T, PROMPT = 5, 3, [1, 2]
# Llama's RMSNorm computes in float32 whatever the model's dtype, so float64 sums agree to ~1e-7
# relative, not 1e-15. The bf16 copy moves this model's gradient by ~1e-3 relative.
FLOAT32_NOISE = 1e-5


def tiny(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():          # sharper distributions than the random init: larger bf16 effects
        model.lm_head.weight.mul_(40.0)
    return model


def response_logprobs(model, sequences: torch.Tensor) -> torch.Tensor:
    """(S, T, V) log-probabilities at the T response positions, in float64."""
    logits = model(sequences).logits[:, len(PROMPT) - 1:-1]
    return torch.log_softmax(logits.double(), -1)


@pytest.fixture(scope="module")
def setting():
    pi, teacher = tiny(0), tiny(1)
    mu = LowPrecisionCopy(pi, torch.bfloat16).synced(pi)
    responses = torch.tensor(list(itertools.product(range(V), repeat=T)))          # (V^T, T)
    sequences = torch.cat([torch.tensor(PROMPT).expand(len(responses), -1), responses], 1)
    with torch.no_grad():
        log_mu = response_logprobs(mu, sequences).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        log_q = response_logprobs(teacher, sequences)
    return pi, sequences, responses, log_mu, log_q


def expected_gradient(pi, sequences, responses, log_q, log_mu=None, prefix_weights=True, positions=None):
    """sum_y P(y) sum_t w_t(y) grad loss_t(y): P = pi without log_mu, else mu with the objective's
    per-token ratio pi/mu (and, with prefix_weights, w_t = prod_{t' < t} pi(y_t')/mu(y_t'))."""
    pi.zero_grad()
    logp = response_logprobs(pi, sequences)
    log_pi_y = logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)                # (S, T)
    behaviour = log_mu if log_mu is not None else log_pi_y.detach()
    inputs = ObjectiveInputs(responses.reshape(-1), TeacherScores(logprobs=log_q.reshape(-1, V)),
                             behaviour_logprobs=None if log_mu is None else log_mu.reshape(-1))
    per_token = make_objective("sampled_rkl")(logp.reshape(-1, V), inputs).loss.view(len(responses), T)
    log_w = (log_pi_y.detach() - behaviour).cumsum(1) - (log_pi_y.detach() - behaviour)     # prefix only
    weights = behaviour.sum(1, keepdim=True).exp() * (log_w.exp() if prefix_weights else 1.0)
    keep = torch.zeros(T, dtype=torch.float64)
    keep[positions if positions is not None else slice(None)] = 1.0
    (weights * per_token * keep).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in pi.parameters()]).clone()


def test_the_bf16_copy_is_a_different_policy(setting):
    pi, sequences, responses, log_mu, _ = setting
    with torch.no_grad():
        log_pi = response_logprobs(pi, sequences).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    assert (log_pi - log_mu).abs().max() > 1e-3          # else every check below is vacuous
    assert log_mu.sum(1).exp().sum().item() == pytest.approx(1.0, abs=1e-12)   # mu is a distribution over V^T


def test_importance_corrected_gradient_under_the_copy_equals_the_full_precision_one(setting):
    pi, sequences, responses, log_mu, log_q = setting
    exact = expected_gradient(pi, sequences, responses, log_q)
    corrected = expected_gradient(pi, sequences, responses, log_q, log_mu)
    assert relative_error(corrected, exact) < FLOAT32_NOISE
    # the check can fail: sampling from mu and pretending it is pi gives another gradient
    assert relative_error(_naive_gradient(pi, sequences, responses, log_q, log_mu), exact) > 10 * FLOAT32_NOISE


def test_per_token_ratio_alone_is_exact_for_a_fixed_prefix_but_not_over_prefixes(setting):
    """What opdkit applies is the per-token ratio (prefixes held fixed, gamma = 0). At the first
    response token the prefix is the prompt, the same under both policies: exact. At later
    positions the prefixes are mu's: the state distribution differs by the sampler gap."""
    pi, sequences, responses, log_mu, log_q = setting
    first = dict(positions=[0])
    assert relative_error(expected_gradient(pi, sequences, responses, log_q, log_mu, prefix_weights=False, **first),
                          expected_gradient(pi, sequences, responses, log_q, **first)) < FLOAT32_NOISE
    later = dict(positions=[1, 2])
    exact = expected_gradient(pi, sequences, responses, log_q, **later)
    per_token_only = expected_gradient(pi, sequences, responses, log_q, log_mu, prefix_weights=False, **later)
    assert 10 * FLOAT32_NOISE < relative_error(per_token_only, exact) < 0.05   # a bias, small for a close copy


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x - reference).norm() / reference.norm()).item()


def _naive_gradient(pi, sequences, responses, log_q, log_mu):
    """Samples from mu scored as if pi had drawn them (no ratio at all)."""
    pi.zero_grad()
    logp = response_logprobs(pi, sequences)
    inputs = ObjectiveInputs(responses.reshape(-1), TeacherScores(logprobs=log_q.reshape(-1, V)))
    per_token = make_objective("sampled_rkl")(logp.reshape(-1, V), inputs).loss.view(len(responses), T)
    (log_mu.sum(1, keepdim=True).exp() * per_token).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in pi.parameters()]).clone()
