"""Sampler, teachers and layer dropping on tiny real HF models."""
from __future__ import annotations

import copy

import pytest
import torch

from opdkit.lab.tiny import build_model, build_tokenizer
from opdkit.models.forward import pack, pad_rows, response_hidden
from opdkit.models.loading import drop_layers, keep_every_nth_layer
from opdkit.models.rollout import HFSampler, response_length
from opdkit.models.teachers import PromptRenderer, SelfTeacher
from opdkit.tasks.data import Example, messages, render


@pytest.fixture(scope="module")
def pair():
    tok = build_tokenizer()
    return tok, build_model(tok, layers=2, seed=0)


def _prompts(tok):
    return [render(tok, messages(p)) for p in ("what is 2+3?", "hola", "the quick brown fox jumps over the lazy dog")]


def _forward_logprobs(model, prompts, responses, pad, temperature=1.0):
    packed = pack(prompts, responses, pad)
    with torch.no_grad():
        logits = model.get_output_embeddings()(response_hidden(model, packed)) / temperature
    return torch.log_softmax(logits.float(), -1), packed


def test_sampler_logprobs_equal_the_training_forward(pair):
    tok, model = pair
    torch.manual_seed(0)
    prompts = _prompts(tok)       # different lengths: generate left-pads, training right-pads
    r = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, prompts, max_new_tokens=10)
    logp, packed = _forward_logprobs(model, r.prompt_ids, r.response_ids, tok.pad_token_id)
    chosen = logp.gather(-1, packed.response_ids.unsqueeze(-1)).squeeze(-1)
    mu = pad_rows(r.sampler_logprobs, packed.response_ids.shape[1])
    torch.testing.assert_close(chosen * packed.response_mask, mu, atol=2e-5, rtol=0)


def test_top_p_logprobs_are_the_renormalised_nucleus(pair):
    tok, model = pair
    torch.manual_seed(1)
    top_p, temperature = 0.6, 0.8
    r = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, _prompts(tok), max_new_tokens=8,
                                                            temperature=temperature, top_p=top_p, record_topk=4)
    logp, packed = _forward_logprobs(model, r.prompt_ids, r.response_ids, tok.pad_token_id, temperature)
    for row in range(len(r)):
        for j, token in enumerate(r.response_ids[row]):
            probs = logp[row, j].exp()
            order = probs.sort(descending=True)
            # nucleus: smallest top set whose mass reaches top_p (HF keeps tokens until cumulative > 1 - top_p from below)
            keep = order.values.flip(0).cumsum(0).flip(0) > 1 - top_p
            nucleus = set(order.indices[keep].tolist())
            assert token in nucleus
            expected = logp[row, j, token] - torch.log(probs[list(nucleus)].sum())
            assert abs(float(r.sampler_logprobs[row][j]) - float(expected)) < 1e-4
        assert r.topk_ids[row].shape == (len(r.response_ids[row]), 4)


def test_response_length_stops_at_first_eos():
    assert response_length(torch.tensor([5, 6, 2, 0, 0]), eos_id=2, pad_id=0) == 3
    assert response_length(torch.tensor([5, 6, 7]), eos_id=2, pad_id=0) == 3
    assert response_length(torch.tensor([2, 2, 2]), eos_id=2, pad_id=2) == 1


def _assert_sampler_logprobs_match_training(model, tok) -> None:
    """The sampler's log-probs of its own tokens equal the training forward's (a layer-cut model's KV
    cache must be indexed by the new layer positions for this to hold)."""
    torch.manual_seed(0)
    r = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, _prompts(tok), max_new_tokens=6)
    logp, packed = _forward_logprobs(model, r.prompt_ids, r.response_ids, tok.pad_token_id)
    chosen = logp.gather(-1, packed.response_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chosen * packed.response_mask, pad_rows(r.sampler_logprobs, chosen.shape[1]),
                               atol=2e-5, rtol=0)


def test_dropped_layers_keep_the_kv_cache_consistent():
    tok = build_tokenizer()
    model = build_model(tok, layers=4, seed=2)
    assert keep_every_nth_layer(model, 2) == [0, 2]
    assert model.config.num_hidden_layers == 2
    _assert_sampler_logprobs_match_training(model, tok)


def test_removing_named_layers_equals_keeping_the_rest():
    """Removing layers 1 and 2 of 4 is the same network as keeping every third layer (0 and 3)."""
    tok = build_tokenizer()
    named, every = build_model(tok, layers=4, seed=2), build_model(tok, layers=4, seed=2)
    full_logits = named(input_ids=torch.tensor([[1, 5, 7, 9]])).logits
    assert drop_layers(named, [2, 1]) == [0, 3] == keep_every_nth_layer(every, 3)
    assert named.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in named.get_decoder().layers] == [0, 1]
    ids = torch.tensor([[1, 5, 7, 9]])
    logits = named(input_ids=ids).logits
    torch.testing.assert_close(logits, every(input_ids=ids).logits)
    assert (logits - full_logits).abs().max() > 1e-3          # the removal changed the function
    _assert_sampler_logprobs_match_training(named, tok)


def test_self_teacher_sees_pi_and_ema_follows_the_closed_form(pair):
    tok, model = pair
    student = copy.deepcopy(model)
    renderer = PromptRenderer(tok, fixed_pi="always answer in spanish.", with_pi=True)
    example = Example("what is 2+3?")
    assert tok.decode(renderer(example)).startswith("<|im_start|>system\nalways answer in spanish.")
    assert "spanish" not in tok.decode(PromptRenderer(tok)(example))
    teacher = SelfTeacher(student, renderer, tok.pad_token_id, len(tok), weights="ema", ema_decay=0.9)
    before = {n: p.clone() for n, p in teacher.copy.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.after_step(student)
    for n, p in teacher.copy.named_parameters():
        live = dict(student.named_parameters())[n]
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * live)


def test_frozen_self_teacher_does_not_move(pair):
    tok, model = pair
    student = copy.deepcopy(model)
    teacher = SelfTeacher(student, PromptRenderer(tok, fixed_pi="x", with_pi=True), tok.pad_token_id, len(tok))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.after_step(student)
    for (n, p), q in zip(teacher.copy.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n


def test_concat_keeps_every_field_across_micro_batches(pair):
    from opdkit.models.rollout import Rollouts
    tok, model = pair
    sampler = HFSampler(tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    parts = [sampler.sample(model, _prompts(tok)[:2], max_new_tokens=4, record_topk=3),
             sampler.sample(model, _prompts(tok)[2:], max_new_tokens=4, record_topk=3)]
    whole = Rollouts.concat(parts)
    assert len(whole) == 3 and len(whole.topk_ids) == 3 and len(whole.sampler_logprobs) == 3
    assert whole.topk_ids[2] is parts[1].topk_ids[0]
    assert Rollouts.concat([parts[0], sampler.sample(model, _prompts(tok)[:1], max_new_tokens=2)]).topk_ids is None


# ----------------------------------------------------------------------------- rows seeded one by one (decode_batch)

def test_the_exponential_race_samples_the_tempered_nucleus_distribution():
    """RowSeededSampling's draw over 20,000 rows seeded 0..N-1: the frequencies are softmax(z / T)
    restricted to the top-p nucleus and renormalised (5 sigma), and the recorded log mu is that law."""
    from opdkit.models.rollout import RowSeededSampling
    n, z = 20000, torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    law = torch.softmax(z / 0.8, -1)
    law = torch.where(torch.arange(5) < 3, law, 0.0) / law[:3].sum()    # the top-p=0.85 nucleus at T=0.8: 3 tokens
    sampler = RowSeededSampling(list(range(n)), temperature=0.8, top_p=0.85)
    forced = sampler(torch.zeros(n, 1, dtype=torch.long), z.expand(n, -1).clone())
    picks = forced.argmax(-1)
    assert torch.isfinite(forced).sum(-1).eq(1).all()                   # exactly one token left for greedy
    frequencies = torch.bincount(picks, minlength=5).double() / n
    sigma = (law * (1 - law) / n).sqrt()
    assert ((frequencies - law).abs() <= 5 * sigma + 1e-12).all(), (frequencies, law)
    torch.testing.assert_close(sampler.chosen[0], law.log()[picks].float(), atol=1e-5, rtol=0)


def test_a_row_seeded_response_depends_only_on_its_seed_not_its_batch(pair):
    """decode_batch 1, 2 or 4, rows in any order: the same responses and log mu for the same seeds."""
    from opdkit.models.rollout import sample_in_decode_batches
    tok, model = pair
    prompts = _prompts(tok) + [render(tok, messages("two plus two"))]
    sampler, seeds = HFSampler(tok.eos_token_id, tok.pad_token_id), [101, 102, 103, 104]
    runs = [sample_in_decode_batches(sampler, model, prompts, seeds, size, max_new_tokens=12, temperature=1.3)
            for size in (4, 2, 1)]
    for other in runs[1:]:
        assert other.response_ids == runs[0].response_ids and other.prompt_ids == prompts
        for a, b in zip(other.sampler_logprobs, runs[0].sampler_logprobs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    alone = sampler.sample(model, [prompts[2]], max_new_tokens=12, temperature=1.3, row_seeds=[103])
    assert alone.response_ids == [runs[0].response_ids[2]]
    other_seeds = sample_in_decode_batches(sampler, model, prompts, [201, 202, 203, 204], 4, max_new_tokens=12,
                                           temperature=1.3)
    assert other_seeds.response_ids != runs[0].response_ids          # sampled, not greedy: the check can fail
    # the recorded log mu is the training forward's, at temperature 1.3
    logp, packed = _forward_logprobs(model, prompts, runs[0].response_ids, tok.pad_token_id, temperature=1.3)
    chosen = logp.gather(-1, packed.response_ids.unsqueeze(-1)).squeeze(-1)
    mu = pad_rows(runs[0].sampler_logprobs, packed.response_ids.shape[1])
    torch.testing.assert_close(chosen * packed.response_mask, mu, atol=2e-5, rtol=0)


@pytest.mark.parametrize("options", [{"greedy": True}, {"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.8}])
def test_recorded_behaviour_equals_generates_own_scores(pair, options):
    """The sampler records log mu per emitted token instead of keeping output_scores' (B, L, V) rows;
    the same seed must give the same tokens, and log mu / top-k equal to what output_scores holds."""
    from transformers import GenerationConfig

    from opdkit.models.rollout import left_pad
    tok, model = pair
    prompts, greedy = _prompts(tok), options.get("greedy", False)
    torch.manual_seed(7)
    r = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, prompts, max_new_tokens=9, record_topk=3, **options)
    ids, attention = left_pad(prompts, tok.pad_token_id)
    config = GenerationConfig(do_sample=not greedy, temperature=None if greedy else options["temperature"],
                              top_p=None if greedy else options.get("top_p", 1.0), top_k=None if greedy else 0,
                              max_new_tokens=9, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              output_scores=True, return_dict_in_generate=True)
    torch.manual_seed(7)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)
    logmu = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)
    new = out.sequences[:, ids.shape[1]:]
    for row in range(len(r)):
        n = len(r.response_ids[row])
        assert r.response_ids[row] == new[row, :n].tolist()
        torch.testing.assert_close(r.sampler_logprobs[row], logmu[row, torch.arange(n), new[row, :n]], rtol=0, atol=0)
        top = logmu[row, :n].topk(3, -1)
        assert torch.equal(r.topk_ids[row], top.indices)
        torch.testing.assert_close(r.topk_logprobs[row], top.values, rtol=0, atol=0)
