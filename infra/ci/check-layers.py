#!/usr/bin/env python3
"""Fails when a module imports a module of a higher layer, or when modules of one layer
import one another in a loop; in the service, also when an HTTP crate is used outside the
HTTP layer.

The service's layers, top to bottom (see src/lib.rs):

    startup -> http -> state -> domain (health, auth, cache, db, metrics, telemetry)
            -> model, error, config, lifecycle, bulkhead

The harness's (see harness/src/lib.rs):

    drills (scenarios, bench) -> what watches or routes to the replicas (balancer,
    prometheus, dns, engine) -> the replicas (cluster) -> parts (tier, proxy, database,
    process, load, report, floor)

Every `crate::<module>` path in code (comments are skipped: a doc link is not a
dependency) is an arrow from the file's top-level module to <module>. Arrows must point
down or stay in a layer; arrows within a layer must not form a cycle.

Usage: infra/ci/check-layers.py [src | harness/src]
"""

import re
import sys
from pathlib import Path

SERVICE_LAYERS = [
    ["startup"],
    ["http"],
    ["state"],
    ["health", "auth", "cache", "db", "metrics", "telemetry"],
    ["model", "error", "config", "lifecycle", "bulkhead", "user_writes"],
]
HARNESS_LAYERS = [
    ["scenarios", "bench", "bin"],
    ["balancer", "prometheus", "alertmanager", "dns", "engine"],
    ["cluster"],
    ["tier", "proxy", "database", "process", "load", "history", "report", "floor"],
]
# The service speaks HTTP only in its HTTP layer and where it starts the server.
HTTP_CRATES = re.compile(r"\b(axum|tower|tower_http|hyper|hyper_util)::")
HTTP_HOMES = {"http", "startup"}
CRATE_PATH = re.compile(r"\bcrate::([a-z_]+)")
# `use crate::{a, b::c}` names several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def top_module(src: Path, file: Path) -> str:
    return file.relative_to(src).parts[0].removesuffix(".rs")


def code_only(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def arrows(src: Path, rank):
    for file in sorted(src.rglob("*.rs")):
        origin = top_module(src, file)
        if origin in ("lib", "main"):
            continue
        if origin not in rank:
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


def http_outside_its_layer(src: Path):
    """Files of the service outside `http/` and `startup.rs` that name an HTTP crate."""
    for file in sorted(src.rglob("*.rs")):
        if top_module(src, file) in HTTP_HOMES | {"lib", "main"}:
            continue
        found = sorted(set(HTTP_CRATES.findall(code_only(file.read_text()))))
        if found:
            yield file, found


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    harness = src.resolve().parent.name == "harness"
    layers = HARNESS_LAYERS if harness else SERVICE_LAYERS
    rank = {module: r for r, modules in enumerate(layers) for module in modules}
    problems = []
    same_layer = {}
    for file, origin, target, problem in arrows(src, rank):
        if problem:
            problems.append(f"{file}: {origin} {problem}")
            continue
        if target == "repo_root":
            continue  # the crate root's one helper, below every layer
        if target not in rank:
            problems.append(f"{file}: imports crate::{target}, which is in no layer")
        elif rank[target] < rank[origin]:
            problems.append(
                f"{file}: {origin} (layer {rank[origin]}) imports crate::{target} "
                f"(layer {rank[target]}, higher): arrows must point down"
            )
        elif rank[target] == rank[origin]:
            same_layer.setdefault(origin, set()).add(target)
    if not harness:
        for file, crates in http_outside_its_layer(src):
            problems.append(
                f"{file}: uses {', '.join(crates)} outside http/ and startup.rs: "
                "HTTP belongs to the HTTP layer"
            )
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
