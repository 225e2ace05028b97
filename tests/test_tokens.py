"""Captions become the same token ids as open_clip's own tokenizer makes, whatever the caption."""

from __future__ import annotations

import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from curator.embed import tokens
from curator.embed.tokens import CaptionTokens, caption_tokens

# printable ASCII (the fast path), what sends a caption down the slow one (control characters, '&',
# HTML entities, mojibake, curly quotes, ligatures, full-width forms), and the special tokens
PIECES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    st.sampled_from(["&amp;", "&lt;b&gt;", "Ã©tÃ©", "\u201cquoted\u201d", "\ufb01ne", "\uff21\uff22", "\t", "\r\n",
                     "\x00", "\x1b[31m", "caf\u00e9", "<start_of_text>", "<end_of_text>", "  ", "It's", "3.14"]),
    st.text(max_size=10),
)
CAPTIONS = st.lists(st.lists(PIECES, max_size=8).map("".join), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def pair() -> tuple[SimpleTokenizer, CaptionTokens]:
    tok = open_clip.get_tokenizer("ViT-B-32")
    fast = caption_tokens(open_clip.get_tokenizer("ViT-B-32"))
    assert isinstance(fast, CaptionTokens)
    return tok, fast


@settings(max_examples=300, deadline=None)
@given(CAPTIONS)
def test_ids_equal_open_clips(pair: tuple[SimpleTokenizer, CaptionTokens], captions: list[str]) -> None:
    tok, fast = pair
    assert torch.equal(fast(captions), tok(captions))
    assert torch.equal(fast(captions, context_length=8), tok(captions, context_length=8))  # truncated


def test_the_word_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "MAX_WORDS", 50)
    tok = open_clip.get_tokenizer("ViT-B-32")
    fast = caption_tokens(open_clip.get_tokenizer("ViT-B-32"))
    assert isinstance(fast, CaptionTokens)
    def word(i: int) -> str:  # a distinct word of letters per number (digits would each be a word)
        return "".join("abcdefghij"[int(d)] for d in str(i)) + "q"

    captions = [f"{word(i)} {word(i * 7 + 5000)} near <start_of_text>" for i in range(400)]
    for s in range(0, len(captions), 20):
        assert torch.equal(fast(captions[s:s + 20]), tok(captions[s:s + 20]))
        assert len(fast.tokenizer.cache) <= 2 + 50 and len(fast._words) <= 50
    assert len(tok.cache) > 400  # open_clip's own cache keeps every word it has seen


def test_other_tokenizers_are_used_as_they_are() -> None:
    canon = SimpleTokenizer(clean="canonicalize")
    assert caption_tokens(canon) is canon
    masked = SimpleTokenizer(reduction_mask="simple")
    assert caption_tokens(masked) is masked
    assert isinstance(caption_tokens(SimpleTokenizer(clean="whitespace")), CaptionTokens)
