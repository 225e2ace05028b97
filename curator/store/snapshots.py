"""A shard's index snapshots in a run directory: per modality, the chain the manifest names.

A chain is a base folder (the whole index) and the delta folders written after it, oldest first
(`curator.index.deltas`); every link is the folder one commit wrote for that modality::

    checkpoints/shard=0/ckpt-000004/image/   a base: index.faiss, items.parquet, recent.npz, index.json
    checkpoints/shard=0/ckpt-000005/image/   a delta: delta.parquet (the rows added since commit 4)

At a commit each index writes the link its chain needs next (a delta, a new base, or nothing when it
added nothing), and the manifest names the whole chain; a restore loads exactly that. A link is
removed only when neither the committed manifest's chains nor the ones being committed name it, so a
crash at any point leaves every link the committed manifest names.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from curator.index.deltas import fsync_path

log = logging.getLogger(__name__)

#: modality -> its chain: the base's folder, then the deltas' (relative to the run directory)
Chains = dict[str, list[str]]


class Snapshotting(Protocol):
    """What a chain needs of an index (`curator.index.VectorIndex`)."""

    def next_snapshot(self, base: str | Path) -> str | None: ...
    def save(self, directory: str | Path, track: bool = False) -> None: ...
    def save_delta(self, directory: str | Path) -> None: ...


def shard_snapshots(run_dir: Path, manifest: dict[str, Any], shard: int) -> Chains:
    """The chains a manifest names for a shard (shard 0's are also `checkpoint`). A run directory of
    format curator-run/1 named one folder of whole snapshots per shard: each modality's is a base."""
    cks = (manifest.get("shards") or {}).get("checkpoints") or {}
    named = cks.get(str(shard)) or (manifest.get("checkpoint") if shard == 0 else None)
    if isinstance(named, str):
        folder = Path(run_dir) / named
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is named by the manifest but missing: the run directory is "
                                    "damaged (restore it from a backup, or start a new one)")
        return {p.name: [f"{named}/{p.name}"] for p in sorted(folder.iterdir()) if (p / "index.json").exists()}
    return {m: list(links) for m, links in (named or {}).items()}


class ShardSnapshots:
    """Writes a shard's chains commit by commit, restores them, and removes the links nothing names."""

    def __init__(self, run_dir: Path, shard: int) -> None:
        self.run_dir = Path(run_dir)
        self.shard = shard
        self.folder = self.run_dir / "checkpoints" / f"shard={shard}"
        self.chains: Chains = {}  # what the last commit written names (the committed one, once its manifest is)

    def resume(self, manifest: dict[str, Any]) -> dict[str, list[Path]]:
        """The folders to restore each index from (base, then deltas), as the manifest names them: the
        chains go on from there (the indexes restored must journal: `VectorIndex.load(track=True)`)."""
        self.chains = shard_snapshots(self.run_dir, manifest, self.shard)
        for p in (p for links in self.chains.values() for p in links):
            if not (self.run_dir / p).is_dir():
                raise FileNotFoundError(f"{self.run_dir / p} is named by the manifest but missing: the run "
                                        "directory is damaged (restore it from a backup, or start a new one)")
        return {m: [self.run_dir / p for p in links] for m, links in sorted(self.chains.items())}

    def write(self, no: int, indexes: Mapping[str, Snapshotting]) -> Chains:
        """Commit `no`'s links: each index adds a delta to its chain, starts a new one with a base, or
        (nothing added) keeps it; durable on return. Then drop the links neither the committed
        manifest (the previous write's chains) nor these chains name."""
        chains: Chains = {}
        for m, index in sorted(indexes.items()):
            rel = f"checkpoints/shard={self.shard}/ckpt-{no:06d}/{m}"
            chain = self.chains.get(m) or []
            what = index.next_snapshot(self.run_dir / chain[0]) if chain else "base"
            if what is not None:
                link = self.run_dir / rel
                if link.exists():  # left by a write whose commit failed: nothing names it
                    shutil.rmtree(link)
                if what == "base":
                    index.save(link, track=True)
                else:
                    index.save_delta(link)
                for d in (link, link.parent, self.folder, self.folder.parent):  # the new names, durable
                    fsync_path(d)
            chains[m] = [rel] if what == "base" else [*chain, *([rel] if what else [])]
        previous, self.chains = self.chains, chains
        self._remove_unnamed({p for links in (*previous.values(), *chains.values()) for p in links},
                             f"commit {no}: named by neither the chains it replaces, {previous}, nor its own, {chains}")
        return chains

    def collect_garbage(self, manifest: dict[str, Any]) -> None:
        """Remove the links a crashed run left behind: everything the manifest does not name."""
        self._remove_unnamed({p for links in shard_snapshots(self.run_dir, manifest, self.shard).values()
                              for p in links}, f"left behind: manifest {manifest.get('commit')} does not name it")

    def _remove_unnamed(self, named: set[str], why: str) -> None:
        if not self.folder.exists():
            return
        removed = []
        for ck in sorted(p for p in self.folder.iterdir() if p.name.startswith("ckpt-")):
            for link in list(ck.iterdir()):
                if str(link.relative_to(self.run_dir)) not in named:
                    removed.append(f"{ck.name}/{link.name}")
                    if link.is_dir():
                        shutil.rmtree(link, ignore_errors=True)
                    else:
                        link.unlink()
            if not any(ck.iterdir()):
                ck.rmdir()
        if removed:
            log.info("shard %d: removed index snapshots %s (%s)", self.shard, ", ".join(removed), why)

