#!/usr/bin/env python3
"""Renders the Traefik labels of a compose service as a file-provider configuration.

    infra/scripts/traefik-labels.py [--compose FILE] [--service NAME]
        [--set KEY=VALUE ...] [--drop-middleware NAME ...] SERVER_URL...

Traefik's Docker provider turns the `traefik.http.*` labels of every running container of
a service into one router and one service whose servers are those containers. This does
the same for a host without Docker: the servers are the URLs given, so the HA tests
(harness/src/balancer.rs) and infra/ci/check-infra.sh run the shipped labels, not a copy
of them. Only what the provider would do is done: dotted keys become nested keys, the
`loadbalancer.server.port`/`scheme` labels give way to the explicit servers, and the
comma lists (entrypoints, middlewares) become lists. Traefik reads keys case-insensitively,
so the labels' lower case is kept.

--set changes one label first (the tests' scaled-down timings), e.g.
  --set traefik.http.services.database-api-lb.loadbalancer.healthcheck.interval=200ms
--drop-middleware removes a middleware from every router (the bench drops rate-limit@file).
Prints JSON, which Traefik's file provider reads as YAML.
"""

import argparse
import json
import pathlib
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
LISTS = {"entrypoints", "middlewares"}


def labels_of(compose, service):
    with open(compose, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    labels = spec["services"][service].get("labels") or {}
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    return {k: str(v) for k, v in labels.items()}


def render(labels, servers, drop):
    config = {}
    for key, value in labels.items():
        parts = key.split(".")
        if parts[:2] != ["traefik", "http"]:
            continue
        parts = parts[1:]
        if parts[-2] == "server" and parts[-1] in ("port", "scheme"):
            continue
        leaf = value.split(",") if parts[-1].lower() in LISTS else value
        if parts[-1].lower() == "middlewares":
            leaf = [m for m in leaf if m not in drop]
        node = config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    services = config.get("http", {}).get("services", {})
    if len(services) != 1:
        sys.exit(f"expected one service in the labels, found {sorted(services)}")
    (service,) = services.values()
    service.setdefault("loadbalancer", {})["servers"] = [{"url": u} for u in servers]
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", default=str(REPO / "docker-compose.ha.yml"))
    parser.add_argument("--service", default="database-api")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--drop-middleware", action="append", default=[], metavar="NAME")
    parser.add_argument("servers", nargs="+", metavar="SERVER_URL")
    args = parser.parse_args()
    labels = labels_of(args.compose, args.service)
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        if key not in labels:
            sys.exit(f"--set {key}: no such label on {args.service}")
        labels[key] = value
    for name in args.drop_middleware:
        if not any(name in v.split(",") for k, v in labels.items() if k.endswith(".middlewares")):
            sys.exit(f"--drop-middleware {name}: no router uses it")
    json.dump(render(labels, args.servers, set(args.drop_middleware)), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
