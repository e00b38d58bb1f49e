"""The lab's controller-side firewall rules (pure data): egress only to the registries."""
from __future__ import annotations

from pathlib import Path

from scalelab import labspec
from scalelab.lab import egress, network, shared

REPO = Path(__file__).resolve().parents[2]


def _rules():
    spec = labspec.load_spec(REPO / "inventory/lab")
    return spec, network._iptables_rules(spec, ["203.0.113.7", "203.0.113.8"])


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
    hosts = egress.registry_hosts("http://mirror.example/debian")
    assert "mirror.example" in hosts and "pypi.org" in hosts


def test_ip_forwarding_stays_on_until_the_last_lab_is_down(tmp_path, monkeypatch) -> None:
    """Two labs on one machine (two checkouts): the first one down must not turn forwarding off under
    the other (it cut that lab's egress: apt hung in its provision); the last one down restores it."""
    fwd, up = tmp_path / "ip_forward", []
    fwd.write_text("0\n")
    monkeypatch.setattr(shared, "IP_FORWARD", fwd)
    monkeypatch.setattr(shared, "SHARED_STATE", tmp_path / "run")
    monkeypatch.setattr(shared, "NSPAWN_RUNDIR", tmp_path / "nspawn")
    monkeypatch.setattr(shared, "labs_up", lambda: list(up))

    def bring_up(chain: str) -> None:
        shared.claim_ip_forward()
        up.append(chain)

    def bring_down(chain: str) -> None:
        up.remove(chain)
        shared.release_shared({"ip_forward_before": "1"})   # what an older lab's state says: ignored here

    bring_up("A-LAB")
    bring_up("B-LAB")
    shared.claim_ip_forward()             # A grows (lab-up again while up): the record stays the machine's
    assert fwd.read_text() == "1\n"
    bring_down("A-LAB")
    assert fwd.read_text() == "1\n", "the first lab down turned forwarding off under the other"
    bring_down("B-LAB")
    assert fwd.read_text() == "0\n" and not (tmp_path / "run/ip_forward_before").exists()
    # a record left by a lab that crashed (no lab up now) is not trusted: the next lab records afresh
    (tmp_path / "run/ip_forward_before").write_text("1\n")
    bring_up("C-LAB")
    bring_down("C-LAB")
    assert fwd.read_text() == "0\n"
    # a lab brought up by an older scalelab has its record in its own state only
    fwd.write_text("1\n")
    shared.release_shared({"ip_forward_before": "0"})
    assert fwd.read_text() == "0\n"
