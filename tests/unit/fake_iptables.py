#!/usr/bin/env python3
"""A stand-in for iptables / ip6tables / *-restore, for testing roles/iptables_loader's script
without touching a real ruleset.  Installed under those four names in a temporary PATH directory.

State: JSON at $FAKE_IPTABLES_STATE, {family: {table: {chain: [rule, ...]}}}, where a rule is the
argument string after the chain name, as `iptables -S` prints it.  Every call is appended to
$FAKE_IPTABLES_STATE.log.  Supports what the loader uses: -S, -C, -I CHAIN 1, -A, -D, -F, -X, -N and
`*-restore --noflush FILE` (a declared user chain is created or flushed; built-in chains are kept).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

BUILTIN = {
    "filter": ["INPUT", "FORWARD", "OUTPUT"],
    "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
}


def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def tables(state: dict, family: str) -> dict:
    fam = state.setdefault(family, {})
    for table, chains in BUILTIN.items():
        t = fam.setdefault(table, {})
        for chain in chains:
            t.setdefault(chain, [])
    return fam


def die(msg: str, code: int = 1):
    print(msg, file=sys.stderr)
    sys.exit(code)


def restore(fam: dict, path: str) -> None:
    table = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = fam.setdefault(line[1:], {})
        elif line == "COMMIT":
            table = None
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if table is None:
                die(f"chain outside a table: {line}")
            if chain in BUILTIN.get("filter", []) + BUILTIN.get("nat", []) and chain in table:
                continue  # built-in: --noflush keeps its rules
            table[chain] = []  # user chain: created, or flushed if it existed
        elif line.startswith("-A "):
            _, chain, *rule = line.split()
            if table is None or chain not in table:
                die(f"no chain {chain}: {line}")
            table[chain].append(" ".join(rule))
        else:
            die(f"unsupported restore line: {line}")


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_IPTABLES_STATE"])
    with open(str(state_path) + ".log", "a") as log:
        log.write(" ".join([Path(argv[0]).name, *argv[1:]]) + "\n")
    name = Path(argv[0]).name
    family = "ip6tables" if name.startswith("ip6tables") else "iptables"
    state = load(state_path)
    fam = tables(state, family)
    args = [a for a in argv[1:] if a not in ("-w", "--wait", "--noflush")]

    if name.endswith("-restore"):
        if len(args) != 1:
            die(f"restore wants one file: {argv}")
        restore(fam, args[0])
        state_path.write_text(json.dumps(state, indent=1))
        return 0

    table = "filter"
    if args[:1] == ["-t"]:
        table, args = args[1], args[2:]
    t = fam.setdefault(table, {})
    op, rest = args[0], args[1:]
    if op == "-S":
        for chain in BUILTIN.get(table, []):
            print(f"-P {chain} ACCEPT")
        for chain in t:
            if chain not in BUILTIN.get(table, []):
                print(f"-N {chain}")
        for chain, rules in t.items():
            for rule in rules:
                print(f"-A {chain} {rule}")
        return 0
    chain = rest[0]
    if chain not in t and op != "-N":
        die(f"iptables: No chain/target/match by that name ({table} {chain}).")
    if op == "-I":
        pos, rule = int(rest[1]), " ".join(rest[2:])
        _check_target(t, rule)
        t[chain].insert(pos - 1, rule)
    elif op == "-A":
        rule = " ".join(rest[1:])
        _check_target(t, rule)
        t[chain].append(rule)
    elif op == "-C":
        return 0 if " ".join(rest[1:]) in t[chain] else 1
    elif op == "-D":
        rule = " ".join(rest[1:])
        if rule not in t[chain]:
            die("iptables: Bad rule (does a matching rule exist in that chain?).")
        t[chain].remove(rule)  # the first match, as iptables does
    elif op == "-F":
        t[chain] = []
    elif op == "-X":
        if chain in BUILTIN.get(table, []) or t[chain]:
            die(f"cannot delete {chain}")
        for rules in t.values():
            if any(r.endswith(f"-j {chain}") for r in rules):
                die(f"{chain} is still referenced")
        del t[chain]
    elif op == "-N":
        t.setdefault(chain, [])
    else:
        die(f"unsupported: {argv}")
    state_path.write_text(json.dumps(state, indent=1))
    return 0


def _check_target(t: dict, rule: str) -> None:
    words = rule.split()
    if "-j" in words:
        target = words[words.index("-j") + 1]
        if target.startswith("SCALELAB-") and target not in t:
            die(f"iptables: Couldn't load target `{target}'")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
