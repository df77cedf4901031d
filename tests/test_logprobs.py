"""Selective log-softmax, and the chunked path equal to the plain one."""
from __future__ import annotations

import pytest
import torch

from opdkit.objectives import OBJECTIVES, make_objective
from opdkit.objectives.logprobs import Head, chunked_objective_loss, objective_loss, selective_log_softmax
from opdkit.objectives.reduction import token_weights
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores


def test_selective_log_softmax_equals_gather_of_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1500, 17, generator=g)               # more rows than one internal chunk
    ids = torch.randint(0, 17, (3, 1500), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, ids), expected)
    bf16 = selective_log_softmax(logits.bfloat16(), ids)
    assert bf16.dtype == torch.float32


def _problem(dtype, seed=0, N=3, T=7, H=16, V=50, bias=False):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, T, H, generator=g).to(dtype)
    ht = torch.randn(N, T, H, generator=g).to(dtype)
    W = (torch.randn(V, H, generator=g) * 0.4).to(dtype)
    Wt = (torch.randn(V, H, generator=g) * 0.4).to(dtype)
    b = (torch.randn(V, generator=g) * 0.1).to(dtype) if bias else None
    ids = torch.randint(0, V, (N, T), generator=g)
    mask = (torch.rand(N, T, generator=g) > 0.3).float()
    extra = {"advantages": torch.randn(N, T, generator=g), "behaviour_logprobs": -torch.rand(N, T, generator=g) * 3}
    return hs, ht, W, Wt, b, ids, mask, extra


def _both_paths(name, dtype, chunk_size=4, temperature=1.0, bias=False, options=None):
    hs, ht, W, Wt, b, ids, mask, extra = _problem(dtype, bias=bias)
    objective = make_objective(name, **(options or {}))
    weights = token_weights(mask, mask.sum())
    results = []
    for chunked in (False, True):
        h, w = hs.clone().requires_grad_(), W.clone().requires_grad_()
        bb = None if b is None else b.clone().requires_grad_()
        if chunked:
            r = chunked_objective_loss(objective, Head(h, w, bb, temperature), ObjectiveInputs(ids, **extra),
                                       weights, teacher=Head(ht, Wt, None, temperature), chunk_size=chunk_size)
        else:
            logits = torch.nn.functional.linear(h, w, bb) / temperature
            logq = torch.log_softmax((ht @ Wt.T).float() / temperature, -1)
            r = objective_loss(objective, logits, ObjectiveInputs(ids, TeacherScores(logprobs=logq), **extra), weights)
        params = (h, w) if bb is None else (h, w, bb)
        results.append((r, torch.autograd.grad(r.loss, params)))
    return results, mask


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_chunked_equals_plain_in_fp32(name):
    options = {"k": 5} if "topk" in name else {}
    ((plain, g_plain), (chunk, g_chunk)), mask = _both_paths(name, torch.float32, options=options)
    torch.testing.assert_close(chunk.loss, plain.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_chunk, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(chunk.per_token * mask, plain.per_token * mask, rtol=1e-5, atol=1e-6)
    for key, value in plain.metrics.items():
        torch.testing.assert_close(chunk.metrics[key] * mask, value.float() * mask, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["rkl", "jsd", "topk_rkl_sg", "sampled_rkl"])
def test_chunked_equals_plain_in_bf16(name):
    ((plain, g_plain), (chunk, g_chunk)), _ = _both_paths(name, torch.bfloat16)
    torch.testing.assert_close(chunk.loss, plain.loss, rtol=2e-2, atol=2e-3)
    for a, b in zip(g_chunk, g_plain, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=2e-2)


def test_chunked_handles_bias_temperature_and_uneven_chunks():
    ((plain, g_plain), (chunk, g_chunk)), _ = _both_paths("kl_mix", torch.float32, chunk_size=5,
                                                         temperature=0.7, bias=True)
    torch.testing.assert_close(chunk.loss, plain.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_chunk, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_without_grad_returns_values_and_builds_no_graph():
    hs, ht, W, Wt, _, ids, mask, _ = _problem(torch.float32)
    with torch.no_grad():
        r = chunked_objective_loss(make_objective("rkl"), Head(hs, W), ObjectiveInputs(ids), mask, teacher=Head(ht, Wt))
    assert not r.loss.requires_grad and r.loss > 0
    assert (r.per_token[mask == 0] == 0).all()               # skipped rows are reported as 0


def test_chunked_rejects_mismatched_weights():
    hs, _, W, _, _, ids, mask, _ = _problem(torch.float32)
    with pytest.raises(ValueError, match="token_weights"):
        chunked_objective_loss(make_objective("sft"), Head(hs, W), ObjectiveInputs(ids), mask[:, :-1])
