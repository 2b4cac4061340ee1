#!/usr/bin/env bash
# Checks that the workspace's rust-version (its MSRV) is true as far as it can be checked with
# the one toolchain this machine has: no dependency in the resolved graph declares a newer
# rust-version than ours. Our own use of the standard library is checked against the same
# value by clippy's incompatible_msrv lint (scripts/test.sh runs clippy with -D warnings).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
ws = set(meta["workspace_members"])
pkgs = {p["id"]: p for p in meta["packages"]}
def ver(v): return tuple((list(map(int, v.split("."))) + [0, 0])[:3])
msrvs = {pkgs[i]["rust_version"] for i in ws}
if len(msrvs) != 1 or None in msrvs:
    sys.exit(f"check-msrv: every crate must inherit the workspace rust-version, found {sorted(map(str, msrvs))}")
ours = msrvs.pop()
# Walk the resolved graph from the workspace members (every dependency kind: tests build too).
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
seen, todo = set(), list(ws)
while todo:
    i = todo.pop()
    if i in seen: continue
    seen.add(i)
    todo.extend(d["pkg"] for d in nodes[i]["deps"])
newer = sorted((pkgs[i]["name"], pkgs[i]["version"], pkgs[i]["rust_version"])
               for i in seen - ws
               if pkgs[i].get("rust_version") and ver(pkgs[i]["rust_version"]) > ver(ours))
if newer:
    sys.exit("check-msrv: rust-version " + ours + " is below what these dependencies need: "
             + ", ".join(f"{n} {v} (rust {r})" for n, v, r in newer))
print(f"check-msrv: rust-version {ours} covers all {len(seen - ws)} dependencies")
'
