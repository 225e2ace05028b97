"""Filters and scores as operators: a class computes a per-item score from a batch, the config's keep rule
decides on it (`[[filters]] op = "caption_words"  min = 3`).

Built-ins: `image_resolution`, `aspect_ratio` (`curator.ops.image`, from image headers),
`caption_length`, `caption_words` (`curator.ops.text`), `language` (`curator.ops.language`, offline).
A user's own filter is a `Filter` subclass in their own module, named in the config by its path
(`op = "mypkg.filters:Blur"`) or registered by name (`@register("blur")`); docs/extending.md.
"""

from __future__ import annotations

from curator.ops.base import Filter, Rule, build_rules
from curator.registry import FILTERS
from curator.resources import Resources

#: Decorator: `@register("name")` makes a Filter class known by that name once its module is imported.
register = FILTERS.register

__all__ = ["Filter", "Resources", "Rule", "build_rules", "register"]
