"""Caption language: the probability that a caption is in one of the wanted languages.

py3langid (langid.py's naive Bayes over byte n-grams, 97 languages, its model inside the package:
no download, no network) gives each caption a probability per language; the score is the sum over
`langs`. Short captions get modest probabilities ("a photo of a cat on a sofa" is English at 0.75),
so `min = 0.5` keeps most of a language and drops the clearly other ones. No caption: NaN.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from curator.ops.base import Filter

CODE = re.compile(r"^[a-z]{2,3}$")


class Language(Filter):
    """P(caption in one of `langs`), ISO 639-1 codes such as "en" (default ["en"])."""

    def __init__(self, langs: list[str] | str = "en") -> None:
        wanted = [langs] if isinstance(langs, str) else langs
        if not isinstance(wanted, list) or not wanted or not all(isinstance(c, str) and CODE.match(c)
                                                                  for c in wanted):
            raise ValueError(f"langs must be a language code or a list of them, such as \"en\" or "
                             f"[\"en\", \"de\"] (ISO 639-1, lower case), got {langs!r}")
        self.langs = list(wanted)
        self._ident: Any = None

    def setup(self) -> None:
        if self._ident is not None:
            return
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        unknown = [c for c in self.langs if c not in ident.nb_classes]
        if unknown:
            raise ValueError(f"language filter: py3langid does not know {', '.join(unknown)}; it knows "
                             f"{', '.join(sorted(ident.nb_classes))}")
        self._ident = ident

    def score(self, samples: pa.Table) -> np.ndarray:
        self.setup()
        out = np.full(samples.num_rows, np.nan)
        for i, text in enumerate(samples.column("text").to_pylist()):
            if text is not None and text.strip():
                out[i] = sum(p for lang, p in self._ident.rank(text) if lang in self.langs)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ident": None}  # the model loads again where the filter runs
