"""One configuration file works with every command that takes --config, and a wrong one is reported whole.

The shipped configs (deploy/*.toml and the TOML in deploy/'s Kubernetes ConfigMaps) are run through
every command that has a --config option, in process, as a user runs them; a config with problems in
several sections gets all of them in one error, from every command alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomllib
import yaml

from curator.config import ConfigError
from pipelines.cli import build_parser, main
from pipelines.config import load_serve_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def shipped_configs() -> dict[str, str]:
    """Every config file the repo ships, by where it is: TOML files, and TOML inside ConfigMaps."""
    out = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(DEPLOY.rglob("*.toml"))}
    for p in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(p.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                out |= {f"{p.relative_to(ROOT)}:{k}": v for k, v in (doc.get("data") or {}).items()
                        if k.endswith(".toml")}
    return out


def commands_with_config() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, p in sub.choices.items() if any("--config" in a.option_strings for a in p._actions)}


def _embeddings_parquet(path: Path, n: int = 40) -> Path:
    x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "embedding": x.tolist(),
                             "label": [i % 2 for i in range(n)]}), path)
    return path


#: What each command needs besides --config to run offline here (the shipped configs name CLIP
#: weights to download, so ingest embeds precomputed vectors instead; serve prints and exits).
COMMAND_ARGS = {
    "config": lambda tmp: [],
    "serve": lambda tmp: ["--print-config"],
    "ingest": lambda tmp: [str(_embeddings_parquet(tmp / "in.parquet")), "--embedder.kind", "precomputed",
                           "--store.out", str(tmp / "run"), "-q"],
}


def test_every_command_with_a_config_option_is_covered() -> None:
    assert commands_with_config() == set(COMMAND_ARGS), "add the new command's arguments to COMMAND_ARGS"


def test_the_shipped_configs_are_found() -> None:
    names = shipped_configs()
    assert "deploy/curator.example.toml" in names and any(n.endswith(":curator.toml") for n in names)


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_works_with_every_command(name: str, command: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = shipped_configs()[name]
    cfg = tmp_path / "curator.toml"
    cfg.write_text(text)
    rc = main([command, "--config", str(cfg), *COMMAND_ARGS[command](tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, f"curator {command} --config {name}: {err}"
    if command in ("config", "serve"):  # the effective config carries every setting the file gave
        shown, given = tomllib.loads(out), tomllib.loads(text)
        for section, values in given.items():
            for key, value in values.items():
                assert shown[section].get(key, {}) == value, (section, key)  # an empty table is left out
    else:
        from curator.store.query import query

        n = query(tmp_path / "run", "SELECT count(*) AS n FROM decisions").column("n")[0].as_py()
        assert n == 40


BAD = """
k_gain = 4                      # outside any section
[selector]
k_gian = 4                      # a typo
keep_rate = "lots"              # a wrong type
tau_noise = 1.5                 # out of range
[index]
kind = "annoy"                  # not a choice
[kafak]                         # a misspelt section
topic = "t"
[service]
port = "http"                   # a wrong type in a section `curator ingest` does not use
embed_actors = 0                # out of range, ditto
[kafka.client]
fetch_sizes = 1                 # not a Kafka client setting
"""

#: Each problem of BAD, as its message says it: the key, and what it takes.
PROBLEMS = [
    "k_gain is set outside any section; put it under [selector]",
    "unknown setting selector.k_gian (did you mean k_gain?)",
    "selector.keep_rate: expected float, got 'lots'",
    "selector.tau_noise must be 'auto' or in [0, 1]",
    "index.kind must be one of auto, flat, hnsw, ivf, ivf-pq, ivf-pq-sq8, or your own class as "
    "'package.module:Class' (docs/extending.md); got 'annoy'",
    "unknown section [kafak] (did you mean kafka?); sections are embedder, index, selector, store, source, "
    "kafka, service",
    "service.port: expected int, got 'http'",
    "service.embed_actors must be >= 1",
    "[kafka.client] fetch_sizes: not a kafka-python client setting",
]


def test_every_problem_in_a_config_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD)
    with pytest.raises(ConfigError) as exc:
        load_serve_config(cfg, {"store": {"commit_every": "often"}})  # as `curator serve` reads it
    more = ["command line: store.commit_every: expected int, got 'often'",
            "no input: set [kafka] bootstrap_servers and topic, or [source] paths"]
    assert len(exc.value.problems) == len(PROBLEMS) + len(more)
    text = str(exc.value)
    assert text.startswith(f"{len(PROBLEMS) + len(more)} problems in the configuration:")
    for problem in PROBLEMS + more:
        assert problem in text, problem


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_every_command_reports_the_same_problems(command: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD)
    rc = main([command, "--config", str(cfg), *COMMAND_ARGS[command](tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for problem in PROBLEMS:
        assert problem in err, (command, problem)
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_section_no_command_uses_is_still_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\nout = "x"\n[kafka]\ntopik = "t"\n')
    with pytest.raises(ConfigError, match=r"unknown setting kafka.topik \(did you mean topic\?\)"):
        load_serve_config(cfg, serving=False)


def test_help_texts_show_percent_signs_once() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert "%%" not in parser.format_help(), name
    assert "20% flipped labels" in sub.choices["demo"].format_help()
