"""Run configuration: one dataclass per component, one TOML file per run.

CLI flags are generated from these dataclasses (``--selector.k-gain 4``), so a flag and a config field
are always the same thing; docs/configuration.md comes from the same metadata (``curator config --reference``).
The flags, the reference and the TOML text are `curator.config_text`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from curator.registry import EMBEDDERS, FILTERS, INDEX_KINDS, RegistryError

#: A setting that takes a number or "auto" (calibrated on the trusted data: curator.select.calibrate).
AutoFloat = typing.Union[float, str]  # noqa: UP007 - a runtime value, read by _field_type
AUTO = "auto"


def setting(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with its help text (and `choices`): what flags and the reference are made from."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class EmbedderConfig:
    kind: str = setting("clip", "embedder: 'clip' (open_clip), 'precomputed' (use the input's embedding column), "
                                "or your own: a registered name or 'package.module:Class' (docs/extending.md)")
    model: str = setting("ViT-B-32", "open_clip model name, 'hf-hub:ORG/REPO', or a model config JSON path")
    pretrained: str = setting("laion2b_s34b_b79k",
                         "open_clip pretrained tag, a local checkpoint path, or '' for random init (tests only)")
    device: str = setting("auto", "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'")
    precision: str = setting("auto", "'auto' (fp16 on CUDA, fp32 on CPU), 'fp32', 'fp16', 'bf16'")
    batch_size: int = setting(64, "items per embedding forward pass")
    decode: str = setting("auto", "image decoding: 'auto' (JPEGs on the GPU when the embedder runs on CUDA: nvJPEG, "
                                  "then resize and normalise as batched tensor ops; else 'pil'), 'pil' (Pillow on the "
                                  "CPU, on decode_threads threads), 'torch' (the tensor path on the embedder's device, CPU "
                                  "included); other formats, and JPEGs the device cannot decode, always go through "
                                  "Pillow", choices=("auto", "pil", "torch"))
    decode_threads: int = setting(0, "threads decoding and preprocessing images with Pillow (0 = the threads torch "
                                     "computes with: the CPUs Ray gives an embedder actor, else this machine's "
                                     "cores); a batch of small pictures (under 8 KB each on average) uses one")
    cache_dir: str = setting("", "where open_clip looks for / stores weights ('' = its default)")
    content_keys: str = setting("auto", "exact copies' keys: 'auto' (the run's own; a new run's: xxh3-64), "
                                "'xxh3-64', 'blake2b-64' (older runs)", choices=("auto", "xxh3-64", "blake2b-64"))


@dataclass
class IndexConfig:
    kind: str = setting("auto", "index of accepted items: 'auto' (exact while small, then ivf-pq rebuilt as it "
                                "grows, ivf-pq-sq8 past auto_memory_mb), 'flat' (exact), 'ivf', 'ivf-pq', "
                                "'ivf-pq-sq8', 'hnsw' (see docs/operations.md), or your own: a registered name or "
                                "'package.module:Class' (docs/extending.md)")
    auto_exact_max: int = setting(8_192, "auto: items searched exactly before the first IVF is built")
    auto_growth: int = setting(4, "auto: the IVF is rebuilt (more lists) each time the index grows this many times")
    auto_memory_mb: int = setting(4096, "auto: past this many MB of uncompressed vectors, the rebuilt index "
                                        "re-ranks with SQ8 codes instead of the exact vectors (d/16 + d bytes per item)")
    auto_window: int = setting(512, "items accepted in the last this-many stream positions are also compared "
                                     "exactly, so an approximate index decides the same whatever the batching "
                                     "(at least [source] batch_size)")
    auto_min_lag: int = setting(4_096, "stream positions between starting a background rebuild and serving from it "
                                        "(at least; also 1/8 of the items it is built from)")
    ivf_nlist: int = setting(0, "IVF: number of lists (0 = about sqrt(n), a power of two)")
    ivf_nprobe: int = setting(16, "IVF: lists probed per search")
    ivf_train_size: int = setting(40_000, "ivf kinds: items held exactly (flat) before the IVF is trained on them")
    pq_refine: int = setting(8, "ivf-pq: candidates re-ranked, as a multiple of the neighbours asked for")
    hnsw_m: int = setting(32, "HNSW: graph degree")
    hnsw_ef_construction: int = setting(80, "HNSW: build-time beam width")
    hnsw_ef_search: int = setting(64, "HNSW: search-time beam width")
    gpu: str = setting("auto", "exact search on a GPU: 'auto' (when present: a FAISS GPU index, or where FAISS has "
                               "no GPU build, torch matmuls on CUDA with fp16 vectors), 'off', 'on' (as auto; an "
                               "error without a GPU), 'torch' (the torch search even beside faiss-gpu; on the CPU "
                               "without CUDA, in fp32: for parity checks)",
                       choices=("auto", "off", "on", "torch"))


@dataclass
class SelectorConfig:
    seed: int = setting(0, "seed of the selector's own RNG (budget sampling); decisions are deterministic given it")
    k_gain: int = setting(4, "neighbours averaged for the gain (the paper's best: 4)")
    k_label: int = setting(10, "neighbours that vote on a label")
    tau_noise: AutoFloat = setting(AUTO, "a label is noisy when the similarity-weighted share of neighbours agreeing "
                                   "is below this; 'auto': the Bayes threshold between the trusted labels' agreement "
                                   "and that of simulated flips of them, at the noise rate the stream shows")
    tau_relabel: AutoFloat = setting(AUTO, "a noisy label is corrected when the neighbours' majority share is at least "
                                     "this; 'auto': the lowest share at which the trusted items' own votes are right "
                                     "with precision >= relabel_precision (lower confidence bound)")
    relabel_precision: float = setting(0.95, "tau_relabel = 'auto': the precision a correction's vote must show on the "
                                       "trusted items")
    relabel_radius: AutoFloat = setting(AUTO, "a correction also needs the nearest neighbour within this cosine "
                                        "distance; 'auto': the median nearest-neighbour distance of accepted items "
                                        "(corrections only where the index is at least as dense as usual)")
    relabel_abstain: str = setting("auto", "a noisy label without strong evidence for a correction: 'auto' drops the "
                                   "item where its agreement is below tau_drop and keeps it flagged above; 'drop' "
                                   "always drops it, 'keep' always keeps it with its label, flagged",
                                   choices=("auto", "drop", "keep"))
    tau_drop: AutoFloat = setting(AUTO, "relabel_abstain = 'auto': a flagged, uncorrected item is dropped when its "
                                  "agreement is below this; 'auto': where the trusted votes bound the share of right "
                                  "labels below it by 0.01 (the rest is kept, flagged)")
    vote_temperature: float = setting(0.05, "neighbour votes are weighted softmax(cos / T); 0 = weight by cos itself")
    label_action: str = setting("relabel", "what to do with noisy labels: 'relabel' (when confident) or 'discard'",
                           choices=("relabel", "discard"))
    min_trusted: int = setting(20, "accepted items needed before label / adaptive-alignment cleaning judges; "
                              "earlier items are accepted unjudged (reason says so)")
    align_mode: str = setting("fixed", "caption cleaning: 'fixed' threshold, 'bootstrap' (calibrated on the trusted "
                                  "bootstrap pairs), 'adaptive' (drop the bottom quantile seen so far), or 'off'",
                         choices=("fixed", "bootstrap", "adaptive", "off"))
    align_threshold: AutoFloat = setting(AUTO, "threshold on cos(image, text) (align_mode 'fixed'); 'auto': the Bayes "
                                         "threshold between the trusted pairs' alignments and those of the same images "
                                         "with other trusted captions, at the mismatch rate the stream shows; a number "
                                         "is per model (DataComp keeps ViT-B/32 pairs at 0.25-0.28)")
    align_drop_quantile: float = setting(0.2, "adaptive mode: drop pairs below this quantile of alignments seen so far")
    align_bootstrap_quantile: float = setting(0.0, "bootstrap mode: the threshold is this quantile of the trusted pairs' "
                                              "alignments (0 = the lowest: no trusted pair would be dropped)")
    align_warmup: int = setting(100, "adaptive mode: pairs seen before the quantile replaces the fixed threshold")
    recaption_hook: str = setting("", "'module:function' called with noisy captions' items to propose new captions")
    eps_dup: AutoFloat = setting(AUTO, "near-duplicate when cos to an accepted item >= 1 - eps_dup; 'auto': the "
                                 "dup_false_rate quantile of accepted items' nearest-neighbour distances, extrapolated "
                                 "below the observed body by its power-law tail")
    dup_false_rate: float = setting(0.001, "eps_dup = 'auto': the share of distinct items the duplicate rule may drop")
    calibrate_every: int = setting(256, "'auto' settings are recalibrated every this many decided items (and when the "
                                   "stream starts after a bootstrap)")
    space: str = setting("image", "what items are compared by: 'image' (their image, and their caption when they "
                                  "have one; a record without an image is rejected, code no-image; precomputed "
                                  "vectors count as images) or 'text' (caption-only data: captions alone, images "
                                  "are neither embedded nor compared; a record without a caption is rejected, "
                                  "code no-text)", choices=("image", "text"))
    dedup_on: str = setting("auto", "modality compared for near-duplicates: 'auto' (image when present), "
                               "'image', 'text'", choices=("auto", "image", "text"))
    hash_dedup: bool = setting(True, "drop an item whose content hash (image bytes, decoded pixels, precomputed "
                                     "vector, or normalised caption in a text run) equals an accepted item's, before "
                                     "any other rule: model-free and never calibrated")
    phash_max_dist: int = setting(4, "with hash_dedup: also drop an image whose 64-bit perceptual hash is within this "
                                     "many bits of an accepted image's (re-encodes, resizes); -1 = no perceptual rule, "
                                     "at most 11")
    gain_quantile: float = setting(0.99, "gain is normalised by this streaming quantile of gains")
    keep_rate: float = setting(0.0, "storage budget: target share of clean items kept, sampled by normalised gain "
                               "(0 = keep every clean non-duplicate item)")
    shards: int = setting(1, "selector shards, each indexing and writing the items routed to it; on Ray, an actor each")
    probe: int = setting(0, "most shards an item searches: its home, then others within shard_margin; 0 = no cap")
    shard_margin: AutoFloat = setting(AUTO, "an item also searches the shards within this cosine distance; "
                                      "'auto': eps_dup's or the copies' reach (routing_margin); 2: all")
    router_train_size: int = setting(4096, "no bootstrap: the shard router trains on the items accepted up to here")


@dataclass
class StoreConfig:
    out: str = setting("runs/latest", "run directory for the curated set, decisions, quarantine and manifest")
    commit_every: int = setting(2048, "items per committed part (a checkpoint is written at each commit)")
    store_images: bool = setting(True, "keep image bytes in the curated set (else only the URI / id)")


@dataclass
class SourceConfig:
    paths: list = setting([], "input files, folders or globs (Parquet, JSONL, image folders, WebDataset tars: "
                               "docs/input-formats.md)")
    format: str = setting("auto", "'auto' (by extension), 'parquet', 'jsonl', 'images', 'webdataset'",
                     choices=("auto", "parquet", "jsonl", "images", "webdataset"))
    bootstrap: list = setting([], "trusted bootstrap files, inserted into the index unjudged before the stream")
    batch_size: int = setting(256, "records read and selected per batch")
    limit: int = setting(0, "stop after this many records (0 = all)")
    max_reject_share: float = setting(0.5, "`curator ingest` exits with status 1 when more than this share of the "
                                           "run's input was rejected as bad input (after printing the rejections "
                                           "by code); 0 or 1 = never")


@dataclass
class FilterConfig:
    """One `[[filters]]` table: an operator (`curator.ops`), its parameters, and the keep rule on its score.

    In TOML the parameters sit beside `op` (`[[filters]] op = "language"  langs = ["en"]  min = 0.5`);
    here they are `params`."""

    op: str = setting("", "the operator: a built-in (image_resolution, aspect_ratio, caption_length, "
                          "caption_words, language), a registered name, or 'package.module:Class' (docs/extending.md)")
    name: str = setting("", "its name in the decisions' `filters` scores and in reasons ('' = op)")
    min: float | None = setting(None, "keep an item whose score is at least this (a score of NaN, the filter not "
                                      "applying, is always kept)")
    max: float | None = setting(None, "keep an item whose score is at most this; neither min nor max: a score only, "
                                      "recorded for every item, dropping none")
    params: dict = setting({}, "every other key of the table: the operator's own parameters (its constructor's "
                               "keyword arguments)")


#: Keys of a `[[filters]]` table that are not the operator's parameters.
FILTER_KEYS = tuple(f.name for f in dataclasses.fields(FilterConfig) if f.name != "params")


@dataclass
class RunConfig:
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    filters: list[FilterConfig] = field(default_factory=list)  # [[filters]], in the order they run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes decisions (not where output goes)."""
        d = self.to_dict()
        d.pop("store", None)
        d["source"] = {"bootstrap": d["source"]["bootstrap"]}
        d["embedder"] = {k: d["embedder"][k] for k in ("kind", "model", "pretrained")}
        if not d["filters"]:
            d.pop("filters")  # a run without filters keeps the fingerprint it had before filters existed
        if d["selector"]["shards"] == 1:  # probe changes nothing: keep the fingerprint of its old default
            d["selector"]["probe"] = 2
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: The run's [sections] (its [[filters]] are an array of tables, not a section).
SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "filters"}


class ConfigError(ValueError):
    """A configuration file or flag is wrong; the message says which and how to fix it.

    It carries every problem found (`problems`, one line each, naming the key and what it takes), so
    a user fixes a config in one go instead of one error per try."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems in the configuration:\n" + "\n".join(
                f"  - {p}" for p in self.problems)
        super().__init__(text)


def raise_problems(problems: list[str]) -> None:
    """One ConfigError with all of `problems`, if there are any."""
    if problems:
        raise ConfigError(problems)


def _collect(found: list[str], problems: list[str] | None) -> None:
    """Hand `found` to the caller's list, or raise them here when the caller gave none."""
    if problems is None:
        raise_problems(found)
    else:
        problems.extend(found)


def _did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _section_cls(name: str) -> type:
    return {f.name: type(f.default_factory()) for f in dataclasses.fields(RunConfig)  # type: ignore[misc,operator]
            if f.name in SECTIONS}[name]


def _field_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    t = hints[name]
    if isinstance(t, types.GenericAlias) or typing.get_origin(t) is not None:
        return typing.get_origin(t) or t
    return t


def is_auto_field(cls: type, name: str) -> bool:
    """A setting that takes a number or 'auto'."""
    return typing.get_type_hints(cls)[name] == AutoFloat


def _coerce(section: str, cls: type, name: str, value: Any) -> Any:
    where = f"{section}.{name}"
    if is_auto_field(cls, name):
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if f != f or f in (float("inf"), float("-inf")):
                raise ValueError(value)
            return f
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number or 'auto', got {value!r}") from None
    t = _field_type(cls, name)
    try:
        if t is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if t is list:
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            return list(value)
        if t is dict:
            if isinstance(value, str):
                value = json.loads(value)  # a flag's value is JSON text; errors are reported below
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if t is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return t(value)
    except (TypeError, ValueError):
        what = "a table / JSON object" if t is dict else t.__name__
        raise ConfigError(f"{where}: expected {what}, got {value!r}") from None


def apply_section(obj: Any, section: str, values: Any, origin: str, problems: list[str] | None = None) -> None:
    """Set one config dataclass's fields from a TOML table or flags, checking names, types and choices.

    Every problem is collected: into `problems` when given (the caller reports them with the rest),
    else raised here, all in one ConfigError. A setting with a problem keeps its previous value."""
    found: list[str] = []
    if not isinstance(values, dict):
        found.append(f"{origin}: [{section}] must be a table of settings, got {type(values).__name__} {values!r:.60}")
        values = {}
    known = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        if name not in known:
            found.append(f"{origin}: unknown setting {section}.{name}{_did_you_mean(name, known)}; "
                         f"[{section}] takes {', '.join(sorted(known))}")
            continue
        try:
            value = _coerce(section, type(obj), name, value)
        except ConfigError as exc:
            found.append(f"{origin}: {exc}")
            continue
        choices = known[name].metadata.get("choices")
        if choices and value not in choices:
            found.append(f"{origin}: {section}.{name} must be one of {', '.join(choices)}, got {value!r}")
            continue
        setattr(obj, name, value)
    _collect(found, problems)


def apply_overrides(cfg: RunConfig, values: dict[str, Any], origin: str, problems: list[str] | None = None,
                    others: dict[str, Any] | None = None) -> RunConfig:
    """Set the sections of `values` (a TOML file's tables, or flags) on `cfg`, collecting every problem.

    `others`: the config objects of sections another layer owns (the service's [kafka] and [service]),
    set the same way, so that one file carries every section and any command can read it; a section
    neither knows is an error."""
    targets = {name: getattr(cfg, name) for name in SECTIONS} | dict(others or {})
    found: list[str] = []
    for section, fields_ in values.items():
        if section == "filters":
            cfg.filters = parse_filters(fields_, origin, found)
        elif section in targets:
            apply_section(targets[section], section, fields_, origin, found)
        elif isinstance(fields_, dict):
            found.append(f"{origin}: unknown section [{section}]{_did_you_mean(section, targets)}; "
                         f"sections are {', '.join(targets)}")
        else:
            homes = [s for s, obj in targets.items() if section in {f.name for f in dataclasses.fields(obj)}]
            where = f"put it under [{homes[0]}]" if len(homes) == 1 else (
                f"put it under one of {', '.join(f'[{h}]' for h in homes)}" if homes else
                f"settings go under a section: {', '.join(f'[{t}]' for t in targets)}")
            found.append(f"{origin}: {section} is set outside any section; {where}")
    _collect(found, problems)
    return cfg


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def parse_filters(values: Any, origin: str, problems: list[str]) -> list[FilterConfig]:
    """The `[[filters]]` tables (or the --filters JSON list) as FilterConfigs; every problem into `problems`
    (each naming the table by its place and op), a filter with a problem left out."""
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError as exc:
            problems.append(f"{origin}: --filters must be a JSON list of objects like "
                            f'[{{"op": "caption_words", "min": 3}}] ({exc})')
            return []
    if isinstance(values, dict):
        problems.append(f"{origin}: filters must be an array of tables: write each filter as its own [[filters]] "
                        "table (double brackets)")
        return []
    if not isinstance(values, list):
        problems.append(f"{origin}: filters must be an array of [[filters]] tables, got {values!r:.60}")
        return []
    out: list[FilterConfig] = []
    for i, table in enumerate(values, 1):
        where = f"{origin}: [[filters]] #{i}"
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table with op = ..., got {table!r:.60}")
            continue
        bounds = [float(table[k]) if _number(table.get(k)) else table.get(k) for k in ("min", "max")]
        spec = FilterConfig(str(table.get("op", "")), str(table.get("name") or ""), *bounds,
                            {k: v for k, v in table.items() if k not in FILTER_KEYS})
        where += f" (op = {spec.op!r})" if spec.op else ""
        found = [f"{where}: {p}" for p in filter_problems(spec, table)]
        if not found and any((o.name or o.op) == (spec.name or spec.op) for o in out):
            found.append(f"{where}: two filters are named {spec.name or spec.op!r}; give one a name = \"...\"")
        problems.extend(found)
        if not found:
            out.append(spec)
    return out


def filter_problems(spec: FilterConfig, table: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with one filter: its op, name, bounds and parameters (the operator's constructor
    checks those)."""
    table = table if table is not None else dataclasses.asdict(spec)
    if not isinstance(table.get("op"), str) or not table["op"]:
        return ["needs op = the operator's name or 'package.module:Class' (built-ins: "
                f"{', '.join(FILTERS.names())})"]
    found = []
    if not isinstance(table.get("name", ""), str):
        found.append(f"name must be a string, got {table['name']!r}")
    for key in ("min", "max"):
        if table.get(key) is not None and not _number(table[key]):
            found.append(f"{key} must be a number, got {table[key]!r}")
    if not found and spec.min is not None and spec.max is not None and spec.min > spec.max:
        found.append(f"min {spec.min:g} is above max {spec.max:g}: no item could be kept")
    try:
        cls = FILTERS.get(spec.op)
    except RegistryError as exc:
        return [*found, str(exc)]
    if not isinstance(cls, type) or not callable(getattr(cls, "score", None)):
        return [*found, f"{spec.op!r} is {cls!r}, not a filter class (subclass curator.ops.Filter, define score)"]
    try:
        cls(**spec.params)
    except TypeError as exc:
        takes = [n for n, p in inspect.signature(cls).parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        found.append(f"bad parameters {', '.join(sorted(spec.params)) or '(none)'}: {exc}; {spec.op} takes "
                     + (", ".join(takes) if takes else "no parameters") + f" besides {', '.join(FILTER_KEYS)}")
    except ValueError as exc:
        found.append(str(exc))
    return found


def read_toml(path: str | Path, hint: str = "see `curator config --reference`") -> dict[str, Any]:
    """A TOML config file as a dict, or a ConfigError that says what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass a TOML file ({hint})")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Defaults, then the TOML file, then explicit overrides (CLI flags)."""
    cfg, problems = RunConfig(), []
    if path:
        apply_overrides(cfg, read_toml(path), str(path), problems)
    if overrides:
        apply_overrides(cfg, overrides, "command line", problems)
    validate_config(cfg, problems)
    raise_problems(problems)
    return cfg


def _auto_or(v: Any, ok: Any) -> bool:
    return v == AUTO or (isinstance(v, (int, float)) and not isinstance(v, bool) and bool(ok(float(v))))


def validate_config(cfg: RunConfig, problems: list[str] | None = None) -> None:
    """Values each setting's type allows but the engine does not (ranges, combinations): every one found
    goes into `problems` when given, else they are raised together."""
    s = cfg.selector
    checks = [
        (s.k_gain >= 1, "selector.k_gain must be >= 1"),
        (s.k_label >= 1, "selector.k_label must be >= 1"),
        (_auto_or(s.tau_noise, lambda v: 0.0 <= v <= 1.0), "selector.tau_noise must be 'auto' or in [0, 1]"),
        (_auto_or(s.tau_relabel, lambda v: 0.0 <= v <= 1.0), "selector.tau_relabel must be 'auto' or in [0, 1]"),
        (_auto_or(s.eps_dup, lambda v: 0.0 <= v < 1.0), "selector.eps_dup must be 'auto' or in [0, 1)"),
        (_auto_or(s.relabel_radius, lambda v: 0.0 <= v <= 2.0), "selector.relabel_radius must be 'auto' or in [0, 2]"),
        (_auto_or(s.shard_margin, lambda v: 0.0 <= v <= 2.0), "selector.shard_margin must be 'auto' or in [0, 2]"),
        (_auto_or(s.align_threshold, lambda v: -1.0 <= v <= 1.0),
         "selector.align_threshold must be 'auto' or in [-1, 1]"),
        (0.0 < s.relabel_precision < 1.0, "selector.relabel_precision must be in (0, 1)"),
        (0.0 < s.dup_false_rate < 0.05, "selector.dup_false_rate must be in (0, 0.05)"),
        (-1 <= s.phash_max_dist <= 11, "selector.phash_max_dist must be in [-1, 11] (-1: no perceptual rule)"),
        (s.calibrate_every >= 1, "selector.calibrate_every must be >= 1"),
        (0.0 < s.gain_quantile <= 1.0, "selector.gain_quantile must be in (0, 1]"),
        (0.0 <= s.keep_rate <= 1.0, "selector.keep_rate must be in [0, 1] (0 disables the budget)"),
        (0.0 <= s.align_drop_quantile < 1.0, "selector.align_drop_quantile must be in [0, 1)"),
        (0.0 <= s.align_bootstrap_quantile < 1.0, "selector.align_bootstrap_quantile must be in [0, 1)"),
        (s.shards >= 1 and s.probe >= 0, "selector.shards must be >= 1 and selector.probe >= 0 (0: no cap)"),
        (s.router_train_size >= s.shards, "selector.router_train_size must be at least selector.shards"),
        (cfg.store.commit_every >= 1, "store.commit_every must be >= 1"),
        (cfg.index.auto_window >= cfg.source.batch_size, "index.auto_window must be at least source.batch_size "
                                                          "(a batch must fit in the exactly searched window)"),
        (cfg.index.auto_growth >= 2 and cfg.index.auto_exact_max >= 1 and cfg.index.ivf_nprobe >= 1,
         "index.auto_growth must be >= 2, index.auto_exact_max and index.ivf_nprobe >= 1"),
        (cfg.source.batch_size >= 1, "source.batch_size must be >= 1"),
        (0.0 <= cfg.source.max_reject_share <= 1.0, "source.max_reject_share must be in [0, 1] (0 or 1: never fail)"),
        (s.space == "image" or cfg.embedder.kind != "precomputed",
         "selector.space = 'text' needs an embedder with a text model (embedder.kind = 'clip'); precomputed vectors "
         "are compared as they are (selector.space = 'image')"),
        (cfg.embedder.batch_size >= 1, "embedder.batch_size must be >= 1"),
        (cfg.embedder.decode_threads >= 0, "embedder.decode_threads must be >= 0 (0: as many as torch's threads)"),
    ]
    kinds = [EMBEDDERS.problem(cfg.embedder.kind, "embedder.kind"),
             INDEX_KINDS.problem(cfg.index.kind, "index.kind", also=("auto",))]
    _collect([msg for ok, msg in checks if not ok] + [k for k in kinds if k], problems)
