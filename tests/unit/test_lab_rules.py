"""The lab's controller-side firewall rules (pure data): egress only to the registries."""
from __future__ import annotations

from pathlib import Path

from scalelab import lab, labspec

REPO = Path(__file__).resolve().parents[2]


def _rules():
    spec = labspec.load_spec(REPO / "inventory/lab")
    return spec, lab._iptables_rules(spec, ["203.0.113.7", "203.0.113.8"])


def test_only_registry_addresses_are_accepted_out_of_the_lab() -> None:
    spec, rules = _rules()
    accepts = [r for t, r in rules if t == "filter" and r[1] == spec.chain and r[-1] == "ACCEPT"]
    outbound = [r for r in accepts if "-d" in r]
    assert {r[r.index("-d") + 1] for r in outbound} == {"203.0.113.7", "203.0.113.8"}
    assert all("80,443" in r for r in outbound)
    # after the accepts, everything else in or out of either bridge is rejected
    chain = [r for t, r in rules if t == "filter" and r[1] == spec.chain]
    tail = chain[-4:]
    assert all(r[-3:-1] == ["REJECT", "--reject-with"] for r in tail)
    assert {(r[2], r[3]) for r in tail} == {("-i", spec.public_bridge), ("-i", spec.private_bridge),
                                            ("-o", spec.public_bridge), ("-o", spec.private_bridge)}


def test_nat_only_for_the_public_lab_subnet() -> None:
    spec, rules = _rules()
    nat = [r for t, r in rules if t == "nat"]
    assert nat[-1] == ["-A", spec.chain, "-s", spec.public_cidr, "-j", "MASQUERADE"]
    # traffic that stays on a lab bridge is returned before it could be masqueraded
    assert nat[:2] == [["-A", spec.chain, "-o", spec.public_bridge, "-j", "RETURN"],
                       ["-A", spec.chain, "-o", spec.private_bridge, "-j", "RETURN"]]


def test_controller_offers_the_lab_dns_only() -> None:
    spec, rules = _rules()
    inp = [r for t, r in rules if r[1] == f"{spec.chain}-IN"]
    ports = {r[r.index("--dport") + 1] for r in inp if "--dport" in r}
    assert ports == {"53"}
    assert inp[-2][-3] == "REJECT" and inp[-1][-1] == "DROP"


def test_registry_hosts_come_from_apt_and_pip_defaults() -> None:
    hosts = lab.registry_hosts("http://mirror.example/debian")
    assert "mirror.example" in hosts and "pypi.org" in hosts
