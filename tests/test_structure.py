"""The layout cannot drift back: the packages import only downward, no module cycles (function-level
imports included), no module over 600 lines, no private name used across packages.

    curator/     the core: imports nothing from connectors or pipelines, nor ray or kafka
    connectors/  sources and sinks: import curator only (never pipelines, never ray)
    pipelines/   Ray composition and the `curator` command: may import both

The checker parses every module with `ast`; the second test feeds it a small tree that breaks each
rule, so a checker that finds nothing cannot pass for a clean layout.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("curator", "connectors", "pipelines")
MAX_LINES = 600
#: top-level package -> packages and external modules it must not import
FORBIDDEN = {
    "curator": {"connectors", "pipelines", "ray", "kafka", "confluent_kafka"},
    "connectors": {"pipelines", "ray"},
    "pipelines": set(),
}


@dataclass
class Layout:
    modules: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import statement, at any depth."""
    out: list[tuple[str, list[str]]] = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def check_layout(root: Path, packages: tuple[str, ...] = PACKAGES, max_lines: int = MAX_LINES,
                 users: tuple[str, ...] = ("tests", "benchmarks")) -> Layout:
    """`packages` are checked for every rule; `users` (tests, benchmarks) only for private names."""
    lay = Layout(modules=_module_names(root, packages))
    mods = lay.modules
    lay.edges = {m: set() for m in mods}
    for m, path in _module_names(root, tuple(u for u in users if (root / u).is_dir())).items():
        for target, names in _imports(m, path):
            src = _resolve(target, mods)
            for n in names:
                if src is not None and n.startswith("_") and not n.startswith("__"):
                    lay.problems.append(f"private name across packages: {m} imports {n} from {src}")
    for m, path in mods.items():
        top = m.split(".")[0]
        home = m if path.name == "__init__.py" else m.rpartition(".")[0]  # the module's own package
        for target, names in _imports(m, path):
            for name in [target, *(f"{target}.{n}" for n in names)]:
                r = _resolve(name, mods)
                if r and r != m:
                    lay.edges[m].add(r)
            first = target.split(".")[0]
            if first in FORBIDDEN.get(top, set()):
                lay.problems.append(f"upward or forbidden import: {m} imports {target}")
            src = _resolve(target, mods)
            if src is not None:
                src_pkg = src if mods[src].name == "__init__.py" else src.rpartition(".")[0]
                for n in names:
                    if n.startswith("_") and not n.startswith("__") and src_pkg != home:
                        lay.problems.append(f"private name across packages: {m} imports {n} from {src}")
        n_lines = len(path.read_text().splitlines())
        if n_lines > max_lines:
            lay.problems.append(f"module over {max_lines} lines: {m} ({n_lines})")
    lay.problems += [f"import cycle: {' <-> '.join(c)}" for c in _cycles(lay.edges)]
    return lay


def test_the_layout_keeps_its_rules() -> None:
    lay = check_layout(REPO)
    assert len(lay.modules) > 40  # the checker saw the packages
    problems = lay.problems
    assert not problems, "\n".join(problems)


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    def write(rel: str, text: str) -> None:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    for pkg in PACKAGES:
        write(f"{pkg}/__init__.py", "")
    write("curator/a.py", "def f():\n    from curator.b import g\n")  # cycle through a function-level import
    write("curator/b.py", "from curator.a import f\n")
    write("curator/up.py", "import pipelines.x\n")  # upward
    write("curator/uses_ray.py", "def f():\n    import ray\n")  # forbidden external, inside a function
    write("connectors/c.py", "from pipelines.x import run\n")  # upward from connectors
    write("pipelines/x.py", "from curator.sub.m import _hidden\n")  # private name across packages
    write("curator/sub/__init__.py", "")
    write("curator/sub/m.py", "_hidden = 1\n")
    write("curator/sub/ok.py", "from curator.sub.m import _hidden\n")  # same package: allowed
    write("pipelines/long.py", "x = 1\n" * (MAX_LINES + 1))
    write("tests/t.py", "from curator.sub.m import _hidden\n")  # tests use the public API too
    got = "\n".join(check_layout(tmp_path).problems)
    assert "import cycle: curator.a <-> curator.b" in got
    assert "curator.up imports pipelines.x" in got
    assert "curator.uses_ray imports ray" in got
    assert "connectors.c imports pipelines.x" in got
    assert "pipelines.x imports _hidden from curator.sub.m" in got
    assert "curator.sub.ok imports _hidden" not in got
    assert f"module over {MAX_LINES} lines: pipelines.long" in got
    assert "tests.t imports _hidden" in got


def test_the_selector_never_imports_the_store() -> None:
    """curator/select decides and indexes; the Parquet rows and their place in the commit protocol are the
    store's (`curator.store.shards` adds them to an index shard where the shard runs)."""
    edges = check_layout(REPO).edges
    bad = sorted(f"{m} imports {t}" for m, ts in edges.items() if m.startswith("curator.select.")
                 for t in ts if t == "curator.store" or t.startswith("curator.store."))
    assert not bad, "\n".join(bad)
