#!/usr/bin/env python3
"""Fails when a crate depends on another in a way DESIGN.md does not allow:
raft -> storage, node -> raft/storage/connectors, jepsen-harness -> jepsen (the checker), nothing
else: the Jepsen checker and harness must never share code with what they check."""
import json
import subprocess
import sys

ALLOWED = {
    "storage": set(),
    "connectors": set(),
    "raft": {"storage"},
    "node": {"raft", "storage", "connectors"},
    "jepsen": set(),
    "jepsen-harness": {"jepsen"},
}
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"]))
names = {p["name"] for p in meta["packages"]}


def role(name):
    return next((r for r in ALLOWED if name == f"chat4all-{r}"), None)


bad = []
for p in meta["packages"]:
    r = role(p["name"])
    for d in p["dependencies"]:
        if d["name"] in names and d.get("kind") in (None, "build"):
            dr = role(d["name"])
            if r is None or dr is None or dr not in ALLOWED[r]:
                bad.append(f'{p["name"]} -> {d["name"]}')
if bad:
    print("crate edges not allowed by DESIGN.md:", *bad, sep="\n  ")
    sys.exit(1)
print("crate edges ok:", ", ".join(sorted(names)))
