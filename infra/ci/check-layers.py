#!/usr/bin/env python3
"""Fails when a module of the service imports a module of a higher layer, or when modules
of one layer import one another in a loop.

The layers, top to bottom (see src/lib.rs):

    startup -> http -> state -> domain (health, auth, cache, db, metrics, telemetry)
            -> model, error, config, lifecycle, bulkhead

Every `crate::<module>` path in code (comments are skipped: a doc link is not a
dependency) is an arrow from the file's top-level module to <module>. Arrows must point
down or stay in a layer; arrows within a layer must not form a cycle.

Usage: infra/ci/check-layers.py [src-dir]
"""

import re
import sys
from pathlib import Path

LAYERS = [
    ["startup"],
    ["http"],
    ["state"],
    ["health", "auth", "cache", "db", "metrics", "telemetry"],
    ["model", "error", "config", "lifecycle", "bulkhead", "user_writes"],
]
RANK = {module: rank for rank, modules in enumerate(LAYERS) for module in modules}
CRATE_PATH = re.compile(r"\bcrate::([a-z_]+)")
# `use crate::{a, b::c}` names several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def top_module(src: Path, file: Path) -> str:
    return file.relative_to(src).parts[0].removesuffix(".rs")


def code_only(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def arrows(src: Path):
    for file in sorted(src.rglob("*.rs")):
        origin = top_module(src, file)
        if origin in ("lib", "main"):
            continue
        if origin not in RANK:
            yield file, origin, None, "is in no layer: add it to LAYERS in check-layers.py"
            continue
        code = code_only(file.read_text())
        targets = set(CRATE_PATH.findall(code))
        for group in CRATE_GROUP.findall(code):
            targets.update(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
        for target in sorted(targets - {origin}):
            yield file, origin, target, None


def find_cycle(edges):
    """One cycle in a directed graph given as {node: set(nodes)}, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    problems = []
    same_layer = {}
    for file, origin, target, problem in arrows(src):
        if problem:
            problems.append(f"{file}: {origin} {problem}")
            continue
        if target not in RANK:
            problems.append(f"{file}: imports crate::{target}, which is in no layer")
        elif RANK[target] < RANK[origin]:
            problems.append(
                f"{file}: {origin} (layer {RANK[origin]}) imports crate::{target} "
                f"(layer {RANK[target]}, higher): arrows must point down"
            )
        elif RANK[target] == RANK[origin]:
            same_layer.setdefault(origin, set()).add(target)
    cycle = find_cycle(same_layer)
    if cycle:
        problems.append("modules of one layer import one another in a loop: " + " -> ".join(cycle))
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"layers: every crate:: import in {src} points down, no loops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
