"""Static checks of the Ansible side: lint, syntax, role layout and argument specs, templates rendered
with the okeanos and the lab variables, and the firewall loader script against a fake iptables.

Nothing here contacts a host or touches this machine's network: templates are rendered by a
localhost-only playbook (tests/unit/ansible/render_roles.yml) and the loader runs with stand-ins for
iptables on PATH (tests/unit/fake_iptables.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv/bin"
ROLES_DIR = ROOT / "roles"
# The roles of the base layer; other layers' roles are checked by their own tests.
ROLES = ["apt_cache", "os_upgrade", "hosts", "nat_gateway", "nat_client", "ssh_mesh", "public_firewall", "iptables_loader"]
LOADER = ROLES_DIR / "iptables_loader/files/scalelab-firewall"
FAKE = Path(__file__).with_name("fake_iptables.py")

pytestmark = pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs the project venv")


def _env(home: Path) -> dict:
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "ANSIBLE_FORCE_COLOR": "0",
            "NO_COLOR": "1", "LANG": "C.UTF-8"}


def _run(args, home: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_env(home))


# --- lint and syntax ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_ansible_lint_production_profile(tmp_path):
    if not (VENV_BIN / "ansible-lint").exists():
        pytest.skip("ansible-lint is not installed in .venv")
    r = _run([VENV_BIN / "ansible-lint", "--offline", "--nocolor", "site.yml"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.mark.parametrize("inventory", ["inventory/okeanos", "inventory/lab"])
def test_site_syntax_check(tmp_path, inventory):
    r = _run([VENV_BIN / "ansible-playbook", "site.yml", "--syntax-check", "-i", inventory], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_security_rules_hold_in_ansible_files():
    """Host key checking on everywhere; never flush chains wholesale; no public binds."""
    files = [ROOT / "ansible.cfg", ROOT / "site.yml", *ROOT.glob("playbooks/**/*"), *ROOT.glob("inventory/okeanos/**/*"),
             *ROOT.glob("inventory/lab/group_vars/all/base.yml")]
    for role in ROLES:
        files += (ROLES_DIR / role).rglob("*")
    bad = re.compile(r"StrictHostKeyChecking[= ]+no|host_key_checking\s*=\s*False|iptables\s+(-t\s+\S+\s+)?-F\s*($|['\"])"
                     r"|UserKnownHostsFile[= ]+/dev/null|0\.0\.0\.0", re.I)
    hits = [f"{f}: {line}" for f in files if f.is_file() and f.suffix != ".pyc"
            for line in f.read_text(errors="replace").splitlines() if bad.search(line)]
    assert hits == []
    cfg = (ROOT / "ansible.cfg").read_text()
    assert re.search(r"^host_key_checking\s*=\s*True", cfg, re.M)
    assert re.search(r"^roles_path\s*=\s*roles", cfg, re.M)
    assert re.search(r"^pipelining\s*=\s*True", cfg, re.M)


# --- role layout and argument specs ----------------------------------------------------------------

def _yaml(path: Path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_role_layout_and_argument_specs(role):
    d = ROLES_DIR / role
    for sub in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "meta/argument_specs.yml"):
        assert (d / sub).is_file(), f"{role}: missing {sub}"
    spec = _yaml(d / "meta/argument_specs.yml")["argument_specs"]["main"]
    options = spec["options"]
    assert spec.get("short_description")
    defaults = _yaml(d / "defaults/main.yml")
    # Every knob in defaults/ is validated, and every validated option is a knob with the role prefix.
    assert set(defaults) == set(options), f"{role}: defaults {sorted(defaults)} vs spec {sorted(options)}"
    for name, opt in options.items():
        assert name.startswith(f"{role}_"), f"{role}: {name} lacks the role prefix"
        assert opt.get("description"), f"{role}: {name} has no description"
        assert opt.get("type"), f"{role}: {name} has no type"
    # Internals live in vars/ with a __<role>_ prefix.
    for f in (d / "vars").glob("*.yml") if (d / "vars").is_dir() else []:
        for name in _yaml(f):
            assert name.startswith(f"__{role}_"), f"{f}: {name} is not __{role}_-prefixed"


@pytest.mark.parametrize("role", ROLES)
def test_every_command_task_says_when_it_changes(role):
    """ansible-lint checks this too; here it is explicit, for handlers as well."""
    for f in list((ROLES_DIR / role).glob("tasks/*.yml")) + list((ROLES_DIR / role).glob("handlers/*.yml")):
        def walk(tasks):
            for t in tasks or []:
                yield t
                for key in ("block", "rescue", "always"):
                    yield from walk(t.get(key))
        for task in walk(_yaml(f) if isinstance(_yaml(f), list) else []):
            mods = {k for k in task if k.split(".")[-1] in ("command", "shell", "script", "raw")}
            if mods:
                assert "changed_when" in task or "creates" in str(task.get(next(iter(mods)))), f"{f}: {task['name']}"


# --- templates rendered with real inventories -----------------------------------------------------

def _lab_inventory(tmp: Path) -> Path:
    """inventory/lab's group_vars plus a hosts.yml shaped like the one `fab lab-up` writes."""
    inv = tmp / "lab"
    inv.mkdir()
    shutil.copytree(ROOT / "inventory/lab/group_vars", inv / "group_vars")
    hosts = {"all": {"children": {"cluster": {"children": {
        "masters": {"hosts": {"master": {"ansible_host": "10.77.0.10", "scalelab_public_ip": "10.77.0.10",
                                        "scalelab_private_ip": "10.77.1.1"}}},
        "workers": {"hosts": {"worker1": {"ansible_host": "10.77.1.2", "scalelab_private_ip": "10.77.1.2"},
                              "worker2": {"ansible_host": "10.77.1.3", "scalelab_private_ip": "10.77.1.3"}}},
    }}}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return inv


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict[str, dict[str, str]]]:
    """Every role template rendered per node: inventory -> host -> file name -> text."""
    out = {}
    tmp = tmp_path_factory.mktemp("render")
    if not (ROOT / "inventory/lab/group_vars/all/network.yml").exists():
        pytest.skip("inventory/lab/group_vars/all/network.yml is missing")
    def render(name: str, inv: Path) -> subprocess.CompletedProcess:
        return _run([VENV_BIN / "ansible-playbook", "tests/unit/ansible/render_roles.yml", "-i", inv,
                     "-e", f"render_out={tmp / name}.json", "-e", "ansible_connection=local",
                     "-e", "ansible_become=false"], tmp)

    inventories = {"okeanos": ROOT / "inventory/okeanos", "lab": _lab_inventory(tmp)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {name: pool.submit(render, name, inv) for name, inv in inventories.items()}
        for name, fut in runs.items():
            r = fut.result()
            assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
            out[name] = json.loads((tmp / f"{name}.json").read_text())
    return out


CASES = {
    "okeanos": {"master": "master", "workers": {"slave1": "192.168.0.2", "slave2": "192.168.0.4"},
                "master_ip": "192.168.0.1", "cidr": "192.168.0.0/24",
                "forwards": [(10022, "192.168.0.2", 22), (13389, "192.168.0.4", 22)]},
    "lab": {"master": "master", "workers": {"worker1": "10.77.1.2", "worker2": "10.77.1.3"},
            "master_ip": "10.77.1.1", "cidr": "10.77.1.0/24",
            "forwards": [(10022, "10.77.1.2", 22), (13389, "10.77.1.3", 22)]},
}


def _rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("inv", list(CASES))
def test_nat_rules(rendered, inv):
    c = CASES[inv]
    rules = _rules(rendered[inv][c["master"]]["10-nat-gateway.v4"])
    dnat = [r for r in rules if "-j DNAT" in r]
    assert dnat == [f"-A SCALELAB-PREROUTING -i eth2 -p tcp -m tcp --dport {p} -j DNAT --to-destination {ip}:{d}"
                    for p, ip, d in c["forwards"]]
    assert f"-A SCALELAB-POSTROUTING -s {c['cidr']} -o eth2 -j MASQUERADE" in rules
    _assert_own_chains_only(rules)
    jumps = _rules(rendered[inv][c["master"]]["10-nat-gateway.jumps"])
    assert jumps == ["iptables nat PREROUTING -j SCALELAB-PREROUTING",
                     "iptables nat POSTROUTING -j SCALELAB-POSTROUTING",
                     "iptables filter FORWARD -j SCALELAB-FORWARD"]


@pytest.mark.parametrize("inv", list(CASES))
def test_public_firewall_rules(rendered, inv):
    c = CASES[inv]
    rules = _rules(rendered[inv][c["master"]]["20-public-firewall.v4"])
    _assert_own_chains_only(rules)
    accepted_ports = [m.group(1) for r in rules if r.startswith("-A SCALELAB-PUBLIC-IN")
                      for m in [re.search(r"-p tcp .*--dport (\d+) -j ACCEPT", r)] if m]
    assert accepted_ports == ["22"]
    assert [r for r in rules if r.startswith("-A SCALELAB-PUBLIC-IN")][-1] == "-A SCALELAB-PUBLIC-IN -j DROP"
    fwd = [r for r in rules if r.startswith("-A SCALELAB-PUBLIC-FWD")]
    assert fwd[-1] == "-A SCALELAB-PUBLIC-FWD -j DROP"
    for port, ip, dport in c["forwards"]:
        assert (f"-A SCALELAB-PUBLIC-FWD -d {ip}/32 -p tcp -m tcp --dport {dport} -m conntrack --ctstate DNAT "
                f"--ctorigdstport {port} -j ACCEPT") in fwd
    v6 = _rules(rendered[inv][c["master"]]["20-public-firewall.v6"])
    _assert_own_chains_only(v6)
    assert "-A SCALELAB-PUBLIC-IN -j DROP" in v6 and "--dport 22" in " ".join(v6)
    jumps = _rules(rendered[inv][c["master"]]["20-public-firewall.jumps"])
    # Only packets that arrive on the public interface meet these chains: the private side is untouched.
    assert jumps and all(" -i eth2 -j SCALELAB-PUBLIC-" in j for j in jumps)


def _assert_own_chains_only(rules: list[str]) -> None:
    """A restore file for --noflush that declares and appends to SCALELAB-* chains only."""
    tables = [r for r in rules if r.startswith("*")]
    assert tables and rules.count("COMMIT") == len(tables)
    for r in rules:
        if r.startswith(":"):
            assert r.startswith(":SCALELAB-") and r.endswith(" - [0:0]"), r
        elif r.startswith("-"):
            assert r.startswith("-A SCALELAB-"), r
            assert not re.match(r"-[FXZP] ", r), r


@pytest.mark.parametrize("inv", list(CASES))
def test_hosts_block_and_known_hosts(rendered, inv):
    c = CASES[inv]
    nodes = {c["master"]: c["master_ip"], **c["workers"]}
    for host in nodes:
        block = rendered[inv][host]["hosts-block"].splitlines()
        assert block == [f"{ip}\t{name}" for name, ip in nodes.items()]
        known = rendered[inv][host]["known_hosts"].splitlines()
        for name, ip in nodes.items():
            assert f"{name},{ip} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name}" in known


@pytest.mark.parametrize("inv", list(CASES))
def test_worker_route_configs(rendered, inv):
    c = CASES[inv]
    for worker in c["workers"]:
        d = rendered[inv][worker]
        netplan = yaml.safe_load(d["netplan-gateway.yaml"])
        assert netplan["network"]["ethernets"]["eth1"]["routes"] == [{"to": "default", "via": c["master_ip"]}]
        assert _rules(d["networkd-gateway.conf"]) == ["[Route]", f"Gateway={c['master_ip']}"]
        hook = d["ifupdown-gateway.sh"]
        assert f"ip -4 route replace default via {c['master_ip']} dev eth1" in hook
        assert '[ "$IFACE" = "eth1" ] || exit 0' in hook


def test_loader_unit(rendered):
    unit = rendered["lab"]["master"]["scalelab-firewall.service"]
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "ExecStart=/usr/local/sbin/scalelab-firewall start" in unit
    assert "WantedBy=multi-user.target" in unit and "Before=network-pre.target" in unit


# --- the loader script against a fake iptables -----------------------------------------------------

class FakeFirewall:
    """Runs roles/iptables_loader/files/scalelab-firewall with iptables stand-ins on PATH."""

    def __init__(self, tmp: Path):
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("iptables", "ip6tables", "iptables-restore", "ip6tables-restore"):
            (self.bin / name).symlink_to(FAKE)
        self.dir = tmp / "firewall.d"
        self.dir.mkdir()
        self.state = tmp / "state.json"

    def load(self, files: dict[str, str], **replace: str) -> None:
        """Write the rules files of a rendered master into the loader's directory."""
        for name, text in files.items():
            if name.endswith((".v4", ".v6", ".jumps")):
                for a, b in replace.items():
                    text = text.replace(a, b)
                (self.dir / name).write_text(text)

    def run(self, action="start") -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "FAKE_IPTABLES_STATE": str(self.state),
               "SCALELAB_FIREWALL_DIR": str(self.dir), "SCALELAB_FIREWALL_IPV6": "1"}
        r = subprocess.run(["/bin/sh", str(LOADER), action], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r

    def rules(self) -> dict:
        return json.loads(self.state.read_text())

    def seed_foreign(self) -> None:
        """Rules another tool (docker, the lab, a user) wrote, which must survive untouched."""
        self.state.write_text(json.dumps({"iptables": {
            "filter": {"INPUT": ["-i lo -j ACCEPT"], "FORWARD": ["-j DOCKER-USER"], "OUTPUT": [],
                       "DOCKER-USER": ["-j RETURN"]},
            "nat": {"PREROUTING": [], "INPUT": [], "OUTPUT": [], "POSTROUTING": ["-s 172.17.0.0/16 -o docker0 -j MASQUERADE"]},
        }}))


@pytest.fixture
def applied(rendered, tmp_path) -> FakeFirewall:
    """A fake ruleset with foreign rules, after one apply of the lab master's rules files."""
    fw = FakeFirewall(tmp_path)
    fw.seed_foreign()
    fw.load(rendered["lab"]["master"])
    fw.run()
    return fw


def _jumps(rules: dict, family="iptables") -> list[str]:
    return sorted(f"{t} {c} {r}" for t, chains in rules[family].items() for c, rs in chains.items()
                  for r in rs if " -j SCALELAB-" in f" {r}" and not c.startswith("SCALELAB-"))


def test_loader_applies_own_chains_and_keeps_foreign_rules(applied):
    fw = applied
    rules = fw.rules()
    v4 = rules["iptables"]
    assert "-i eth2 -p tcp -m tcp --dport 10022 -j DNAT --to-destination 10.77.1.2:22" in v4["nat"]["SCALELAB-PREROUTING"]
    assert v4["nat"]["SCALELAB-POSTROUTING"] == ["-s 10.77.1.0/24 -o eth2 -j MASQUERADE"]
    assert v4["filter"]["SCALELAB-PUBLIC-IN"][-1] == "-j DROP"
    assert _jumps(rules) == sorted([
        "filter FORWARD -j SCALELAB-FORWARD", "filter FORWARD -i eth2 -j SCALELAB-PUBLIC-FWD",
        "filter INPUT -i eth2 -j SCALELAB-PUBLIC-IN",
        "nat POSTROUTING -j SCALELAB-POSTROUTING", "nat PREROUTING -j SCALELAB-PREROUTING"])
    assert _jumps(rules, "ip6tables") == ["filter FORWARD -i eth2 -j SCALELAB-PUBLIC-FWD",
                                          "filter INPUT -i eth2 -j SCALELAB-PUBLIC-IN"]
    # Foreign rules and chains are untouched.
    assert "-i lo -j ACCEPT" in v4["filter"]["INPUT"]
    assert "-j DOCKER-USER" in v4["filter"]["FORWARD"] and v4["filter"]["DOCKER-USER"] == ["-j RETURN"]
    assert "-s 172.17.0.0/16 -o docker0 -j MASQUERADE" in v4["nat"]["POSTROUTING"]
    # No flush of anything but our chains, ever.
    log = Path(str(fw.state) + ".log").read_text()
    assert not re.search(r" -F (?!SCALELAB-)", log) and " -X" not in log


def test_loader_is_idempotent(rendered, tmp_path):
    fw = FakeFirewall(tmp_path)
    fw.seed_foreign()
    fw.load(rendered["okeanos"]["master"])
    fw.run()
    first = fw.rules()
    fw.run()
    fw.run("reload")
    assert fw.rules() == first


def test_loader_replaces_stale_rules_and_jumps(rendered, applied):
    fw = applied
    # The public interface is renamed and the second forward dropped: old jumps and rules must go.
    for f in fw.dir.iterdir():
        f.unlink()
    fw.load(rendered["lab"]["master"], eth2="ens3")
    pre = fw.dir / "10-nat-gateway.v4"
    pre.write_text("\n".join(line for line in pre.read_text().splitlines() if "13389" not in line) + "\n")
    fw.run()
    rules = fw.rules()
    jumps = _jumps(rules)
    assert "filter INPUT -i ens3 -j SCALELAB-PUBLIC-IN" in jumps
    assert not any("eth2" in j for j in jumps)
    assert len(jumps) == len(set(jumps)) == 5
    assert not any("13389" in r for r in rules["iptables"]["nat"]["SCALELAB-PREROUTING"])
    assert "-i lo -j ACCEPT" in rules["iptables"]["filter"]["INPUT"]


def test_loader_stop_removes_only_its_own(applied):
    fw = applied
    fw.run("stop")
    rules = fw.rules()
    for family in rules.values():
        for chains in family.values():
            assert not any(c.startswith("SCALELAB-") for c in chains)
            assert not any("SCALELAB-" in r for rs in chains.values() for r in rs)
    assert rules["iptables"]["filter"]["DOCKER-USER"] == ["-j RETURN"]
    assert "-s 172.17.0.0/16 -o docker0 -j MASQUERADE" in rules["iptables"]["nat"]["POSTROUTING"]


def test_loader_is_posix_sh():
    if shutil.which("dash") is None:
        pytest.skip("dash is not installed")
    assert subprocess.run(["dash", "-n", str(LOADER)]).returncode == 0
    assert os.access(LOADER, os.X_OK)
