"""Captions to token ids exactly as open_clip's BPE tokenizer makes them, for a fraction of its CPU.

open_clip's `SimpleTokenizer` spends ~63 us of CPU on a ten-word caption (here, one thread): every
caption goes through ftfy and two HTML unescapes (~25 us), and every word is byte-encoded, looked up
in the BPE cache, split and mapped to ids. On a GPU node, where the model's work leaves the CPU, that
is most of what an embedder actor still spends on a caption. `CaptionTokens` keeps the tokenizer's own rules and only skips
work whose result is known:

- a caption of printable ASCII without ``&`` is left as it is by ftfy (every fix it makes starts from
  a non-ASCII character, a control character or an HTML entity) and by ``html.unescape``, so its
  cleaning is only the white-space collapse and the case fold that follow;
- a word's ids are the same wherever it occurs, so they are cached per word (bounded: the cache, and
  the tokenizer's own BPE cache, which open_clip never empties, are cleared when they pass `MAX_WORDS`
  -- a long-running service sees an unbounded vocabulary of names, typos and codes).

Any other caption is cleaned by the tokenizer's own function. Tokenizers of another kind (Hugging
Face's, or one with a reduction mask) are used as they are (`caption_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: words whose ids are kept before both caches are emptied (~200 bytes each, with the BPE cache's entry)
MAX_WORDS = 200_000


def caption_tokens(tokenizer: Any) -> Callable[[Sequence[str]], torch.Tensor]:
    """`CaptionTokens` around open_clip's BPE tokenizer when its cleaning is one this module knows;
    otherwise the tokenizer itself."""
    try:
        from open_clip import tokenizer as oc
    except ImportError:
        return tokenizer
    if type(tokenizer) is not oc.SimpleTokenizer or tokenizer.reduction_fn is not None:
        return tokenizer
    fold = {oc._clean_lower: True, oc._clean_whitespace: False}.get(tokenizer.clean_fn)
    if fold is None:
        return tokenizer
    return CaptionTokens(tokenizer, fold)


class CaptionTokens:
    """Call it like the tokenizer: a list of captions -> (n, context_length) int64 token ids."""

    def __init__(self, tokenizer: Any, lower: bool) -> None:
        self.tokenizer = tokenizer
        self.lower = lower
        self.context_length = int(tokenizer.context_length)
        self._words: dict[str, list[int]] = {}
        # the BPE cache's seed entries: the special tokens map to themselves, never merged
        self._special = {t: t for t in (tokenizer.decoder[i] for i in tokenizer.all_special_ids)}

    def clean(self, text: str) -> str:
        """The tokenizer's cleaning of `text`."""
        if text.isascii() and text.isprintable() and "&" not in text:
            out = " ".join(text.split())
            return out.lower() if self.lower else out
        return self.tokenizer.clean_fn(text)

    def encode(self, text: str) -> list[int]:
        """`SimpleTokenizer.encode(text)`: the ids of a caption without its start and end tokens."""
        tok, words = self.tokenizer, self._words
        out: list[int] = []
        for word in tok.pat.findall(self.clean(text)):
            ids = words.get(word)
            if ids is None:
                if len(words) >= MAX_WORDS:
                    words.clear()
                    tok.cache = dict(self._special)
                bpe = tok.bpe("".join(tok.byte_encoder[b] for b in word.encode("utf-8")))
                ids = words[word] = [tok.encoder[p] for p in bpe.split(" ")]
            out.extend(ids)
        return out

    def __call__(self, texts: Sequence[str] | str, context_length: int | None = None) -> torch.Tensor:
        import torch

        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        sot, eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        out = np.zeros((len(texts), ctx), np.int64)
        for i, text in enumerate(texts):
            ids = [sot, *self.encode(text), eot]
            if len(ids) > ctx:  # truncated, and still ended by the end token (as open_clip does)
                ids = ids[:ctx]
                ids[-1] = eot
            out[i, :len(ids)] = ids
        return torch.from_numpy(out)
