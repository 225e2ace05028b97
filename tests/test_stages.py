"""The stages of a run: in data-flow order, addressed by role, the checkpointed one last; every stage's
(and every step's) time reported with each batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from connectors.files import FileSource
from curator.demo_data import demo_config, write_demo_inputs
from curator.run import LocalExecutor
from curator.stages import Stages, build_stages


def test_stages_are_in_data_flow_order_and_addressed_by_role(tmp_path: Path) -> None:
    stages = build_stages(demo_config(tmp_path, 0))
    assert stages.roles == ["validate", "embed", "select"]
    assert [s.name for s in stages] == stages.roles
    assert stages.by_role("validate") is stages.validate and stages.by_role("embed") is stages.embed
    assert stages.by_role("select") is stages.select
    assert stages.upstream == [stages.validate, stages.embed]  # what an embedder actor runs, in order
    with pytest.raises(KeyError, match="no 'filter' stage in this run .*validate, embed, select"):
        stages.by_role("filter")


def test_stages_refuse_a_shared_role_or_a_checkpointed_stage_not_last(tmp_path: Path) -> None:
    s = build_stages(demo_config(tmp_path, 0))
    with pytest.raises(ValueError, match="its own role"):
        Stages([s.validate, s.validate, s.embed, s.select])
    with pytest.raises(ValueError, match="last stage must be the checkpointed select-and-write stage"):
        Stages([s.validate, s.select, s.embed])


def test_each_stage_and_each_select_and_write_step_is_timed(tmp_path: Path) -> None:
    write_demo_inputs(tmp_path, 0)
    cfg = demo_config(tmp_path, 0)
    with LocalExecutor(build_stages(cfg)) as ex:
        resume = ex.setup()
        assert resume.commit == 0 and not resume.bootstrapped
        batch = next(FileSource(cfg.source.paths, cfg.source.format).batches(64))
        out = ex.process(batch)
        assert out.items == 64 and sum(out.counts.values()) == 64
        assert set(out.seconds) == {"validate", "embed", "select", "write"}
        assert all(v >= 0.0 for v in out.seconds.values())
        assert ex.commit().commit == 1


def test_the_select_stage_loads_the_compiled_loop_while_it_sets_up(tmp_path: Path) -> None:
    """In a fresh process the selection loop's compiled code is loaded by `setup()`, not inside the
    stream's first batch (where every batch in flight would wait for it), quietly: what a throwaway
    selector would say of its made-up stream is not the run's."""
    code = textwrap.dedent(f"""
        import logging
        from curator.demo_data import demo_config
        from curator.select import kernel
        from curator.stages import build_stages

        said = []
        class Keep(logging.Handler):
            def emit(self, record):
                said.append((record.name, record.getMessage()))
        logging.getLogger("curator").addHandler(Keep())
        logging.getLogger("curator").setLevel(logging.INFO)
        stage = build_stages(demo_config({str(tmp_path)!r}, 0)).select
        assert not kernel.resolve.signatures, "loaded before the stage's setup"
        stage.setup()
        assert kernel.resolve.signatures, "setup() did not load the selection loop"
        assert logging.getLogger("curator.select").level == logging.NOTSET
        assert not [s for s in said if s[0].startswith("curator.select")], said
        assert stage.index_size == 0 and stage.selector.seq == 0  # nothing of it in the run's selector
        print("ok")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
