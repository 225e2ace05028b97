"""Resume of a changing file input: each item is decided exactly once, whatever happened to the files.

A hypothesis state machine grows, shrinks, renames and appends to a folder of images, JSONL, Parquet
and WebDataset files between runs that stop after any number of items (a commit: the positions
through JSON, as the manifest keeps them). At every step, no item has been decided twice, and a run
to the end leaves every item of the folder decided -- what one uninterrupted run over it would do.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from connectors.files import FileSource
from curator.batch import Positions, advance, positions_from_json, positions_to_json


def png(token: int) -> bytes:
    """A small PNG whose pixels carry `token`: every image item has its own bytes."""
    from PIL import Image

    img = Image.new("RGB", (3, 3), (token % 256, token // 256 % 256, 17))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def identity(record: dict) -> str:
    """What an item is, whatever file or path it is read from."""
    if "image" in record and isinstance(record["image"], bytes) and "text" not in record:
        from PIL import Image

        r, g, _ = Image.open(io.BytesIO(record["image"])).getpixel((0, 0))
        return f"img{r + 256 * g}"
    return str(record.get("text"))


class FolderResume(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.token = 0
        self.positions: Positions = {}
        self.decided: list[str] = []
        self.files: dict[str, list[str]] = {}  # data file name -> the items it holds, in order

    @initialize()
    def make_folder(self) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="resume-prop-"))
        (self.root / "imgs").mkdir()
        (self.root / "data").mkdir()
        for _ in range(3):
            self.add_image()

    def next_token(self) -> int:
        self.token += 1
        return self.token

    # ------------------------------------------------------------------ changes to the input

    @rule()
    def add_image(self) -> None:
        t = self.next_token()
        (self.root / "imgs" / f"{t * 7919 % 1000:03d}_{t}.png").write_bytes(png(t))

    @precondition(lambda self: any((self.root / "imgs").iterdir()))
    @rule(pick=st.integers(0, 10**6), prefix=st.sampled_from(["aaa_", "zzz_", "m_"]))
    def rename_image(self, pick: int, prefix: str) -> None:
        imgs = sorted((self.root / "imgs").iterdir())
        src = imgs[pick % len(imgs)]
        src.rename(src.with_name(f"{prefix}{self.next_token()}.png"))

    @precondition(lambda self: len(list((self.root / "imgs").iterdir())) > 1)
    @rule(pick=st.integers(0, 10**6))
    def remove_image(self, pick: int) -> None:
        imgs = sorted((self.root / "imgs").iterdir())
        imgs[pick % len(imgs)].unlink()

    @rule(kind=st.sampled_from(["jsonl", "parquet", "tar"]), n=st.integers(0, 5))
    def add_file(self, kind: str, n: int) -> None:
        name = f"f{self.next_token()}.{kind}"
        self.files[name] = []
        self.write(name, n)

    @precondition(lambda self: bool(self.files))
    @rule(pick=st.integers(0, 10**6), n=st.integers(1, 4))
    def append(self, pick: int, n: int) -> None:
        names = sorted(self.files)
        self.write(names[pick % len(names)], n)

    @precondition(lambda self: bool(self.files))
    @rule(pick=st.integers(0, 10**6))
    def rename_file(self, pick: int) -> None:
        names = sorted(self.files)
        old = names[pick % len(names)]
        new = f"r{self.next_token()}{Path(old).suffix}"
        (self.root / "data" / old).rename(self.root / "data" / new)
        self.files[new] = self.files.pop(old)

    @precondition(lambda self: bool(self.files))
    @rule(pick=st.integers(0, 10**6))
    def remove_file(self, pick: int) -> None:
        names = sorted(self.files)
        name = names[pick % len(names)]
        (self.root / "data" / name).unlink()
        del self.files[name]

    def write(self, name: str, n: int) -> None:
        """Grow a data file by `n` items the way each format grows: JSONL appended, a tar appended to,
        Parquet rewritten with its old rows first."""
        path = self.root / "data" / name
        new = [f"{name.split('.')[0]}-item{self.next_token()}" for _ in range(n)]
        old = self.files[name]
        self.files[name] = old + new
        if name.endswith(".jsonl"):
            with open(path, "a") as f:
                f.writelines(json.dumps({"id": t, "text": t}) + "\n" for t in new)
        elif name.endswith(".parquet"):
            rows = [{"id": t, "text": t} for t in old + new]
            pq.write_table(pa.Table.from_pylist(rows, pa.schema([("id", pa.string()), ("text", pa.string())])),
                           path, row_group_size=2)
        else:
            with tarfile.open(path, "a") as tf:
                for t in new:
                    info = tarfile.TarInfo(f"{t}.txt")
                    info.size = len(t)
                    tf.addfile(info, io.BytesIO(t.encode()))

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ runs

    def present(self) -> set[str]:
        out = {identity({"image": p.read_bytes()}) for p in (self.root / "imgs").iterdir()}
        for items in self.files.values():
            out.update(items)
        return out

    def run(self, limit: int | None, batch_size: int) -> None:
        paths = [str(self.root / "imgs")] + ([str(self.root / "data")] if self.files else [])
        src = FileSource(paths)
        src.seek(self.positions)
        n = 0
        for b in src.batches(batch_size):
            if limit is not None and n >= limit:
                break
            assert not b.errors, [e.reason for e in b.errors]
            self.decided += [identity(r) for r in b.records]
            advance(self.positions, b.positions)
            n += len(b)
        self.positions = positions_from_json(json.loads(json.dumps(positions_to_json(self.positions))))

    @rule(limit=st.integers(0, 6), batch_size=st.integers(1, 4))
    def interrupted_run(self, limit: int, batch_size: int) -> None:
        self.run(limit, batch_size)

    @rule(batch_size=st.integers(1, 5))
    def full_run(self, batch_size: int) -> None:
        self.run(None, batch_size)
        assert self.present() <= set(self.decided), self.present() - set(self.decided)

    @invariant()
    def each_item_decided_at_most_once(self) -> None:
        seen: set[str] = set()
        twice = {d for d in self.decided if d in seen or seen.add(d)}
        assert not twice, f"decided twice: {sorted(twice)}"


FolderResume.TestCase.settings = settings(
    max_examples=150, stateful_step_count=16, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_each_item_decided_exactly_once_across_changes = FolderResume.TestCase
