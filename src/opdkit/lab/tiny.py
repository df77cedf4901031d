"""Tiny real Hugging Face models and a locally built tokenizer, for tests and the lab.

Nothing here is a mock: the tokenizer is a byte-level BPE trained on a small built-in
corpus with a ChatML template (the same shape as SmolLM2's), and the models are ordinary
`LlamaForCausalLM` or `Qwen2ForCausalLM` instances from small configs. `save_tiny(dir)` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load like any downloaded checkpoint, so the engine is exercised through the same calls it
makes on real models.
"""
from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "what is two plus three? the answer is 5.", "always answer in spanish. la respuesta es cinco.",
    "the quick brown fox jumps over the lazy dog", "0 1 2 3 4 5 6 7 8 9 10 11 12 + - = ?",
    "system user assistant answer question rule maybe wait but so therefore",
    "hola gracias el la los las es una por favor buenos dias",
]


def build_tokenizer(vocab_size: int = 320, specials: list[str] = SPECIAL_TOKENS, eos: str = "<|im_end|>",
                    template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer with ChatML specials; EOS = <|im_end|>, pad = specials[0].

    The arguments exist to build deliberately mismatched pairs for the preflight tests.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=specials[0],
                                   bos_token=None, unk_token=None)
    fast.chat_template = template
    return fast


def build_base_tokenizer(vocab_size: int = 400):
    """A SentencePiece-style BPE of a base model: spaces as '▁' that end tokens, byte fallback, EOS '</s>',
    no chat template. With `build_tokenizer` it makes a cross-tokenizer pair: other ids, other boundaries."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


ARCHS = ("llama", "qwen2")


def build_model(tokenizer, layers: int = 2, hidden: int = 32, seed: int = 0, arch: str = "llama"):
    """A LlamaForCausalLM or Qwen2ForCausalLM with small dims whose vocabulary matches `tokenizer`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"tiny model arch must be one of {ARCHS}, got {arch!r}")
    torch.manual_seed(seed)
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512, tie_word_embeddings=False,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=None)
    model = model_cls(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model.eval()


def save_tiny(directory: str | Path, layers: int = 2, hidden: int = 32, seed: int = 0, tokenizer=None,
              arch: str = "llama") -> Path:
    """Write a tiny model and its tokenizer to `directory` (a normal HF checkpoint)."""
    directory = Path(directory)
    tokenizer = tokenizer or build_tokenizer()
    build_model(tokenizer, layers, hidden, seed, arch).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
