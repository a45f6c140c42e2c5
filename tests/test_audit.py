"""`fleet audit` on real manifests from simulator runs of several stations: a clean set is clean
(exit 0); each planted problem (a duplicated key from a broken random source, a cloned device
UUID, a re-provisioned IMEI, a foreign certificate, a tampered manifest, one board at two
stations) is found, with its evidence (exit 1)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.manifest import sign, write_manifest
from fleet.nrf91 import luhn_digit
from fleet.station_key import load_signing_key
from tests.certhelpers import make_ca
from tests.runhelpers import KEYS, REPO, fleet, run_json, write_plan

pytestmark = pytest.mark.timeout(300)

TLS, ENDORSEMENT = 16842753, 33
CA_KEYS = KEYS.replace("    if_exists: keep\n", """    if_exists: keep
    ca: {cert: ca/ca.pem, key: ca/ca.key}
""")


@dataclass
class Station:
    directory: Path
    manifests: list[Path]

    @property
    def pubkey(self) -> Path:
        return self.directory / "keys" / "station.pub.pem"


def _station(directory: Path, name: str, *, ports: str, seed: int, keys: str = KEYS,
             slot_keys: str = "[tls, endorsement]", faults: str = "[]", runs: int = 1,
             plan_name: str = "plan.yaml") -> Station:
    directory.mkdir(exist_ok=True)
    plan = write_plan(directory, ports=ports, keys=keys, slot_keys=slot_keys, name=plan_name,
                      extra=f"simulator: {{state: sim.json, seed: {seed}, faults: {faults}}}\n")
    plan.write_text(plan.read_text().replace("station: test-station", f"station: {name}"))
    manifests = []
    for _ in range(runs):
        code, doc, err = run_json(plan, directory / f"{plan.stem}.sqlite")
        assert code == 0, err
        manifests.append(Path(doc["manifest"]))
    return Station(directory, manifests)


def _audit(*paths: Path, keys: list[Path]) -> tuple[int, dict[str, Any]]:
    args: list[str | Path] = ["audit", *paths, "--json", "--jobs", "2"]
    for key in keys:
        args += ["--pubkey", key]
    result = fleet(*args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _kinds(report: dict[str, Any]) -> list[str]:
    return [f["kind"] for f in report["findings"]]


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Station]]:
    """line1 (three boards, certificates, run twice) and line2 (two other boards)."""
    root = tmp_path_factory.mktemp("factory")
    make_ca(root / "line1" / "ca")
    yield {"line1": _station(root / "line1", "line1", ports="sim://0-2", seed=0, keys=CA_KEYS,
                             runs=2),
           "line2": _station(root / "line2", "line2", ports="sim://0-1", seed=1)}


def _clean(factory: dict[str, Station]) -> tuple[list[Path], list[Path]]:
    return ([s.directory / "out" for s in factory.values()],
            [s.pubkey for s in factory.values()])


def test_a_clean_set_is_clean(factory: dict[str, Station]) -> None:
    paths, keys = _clean(factory)
    code, report = _audit(*paths, keys=keys)
    assert code == 0 and report["ok"] and report["findings"] == []
    assert (report["manifests"], report["devices"], report["keys"]) == (3, 8, 16)
    human = fleet("audit", *paths, *[a for k in keys for a in ("--pubkey", k)])
    assert human.returncode == 0 and "clean" in human.stderr


def test_a_broken_random_source_is_a_duplicated_key(factory: dict[str, Station],
                                                    tmp_path: Path) -> None:
    weak = _station(tmp_path / "line3", "line3", ports="sim://0-2", seed=3,
                    faults="['keygen-weak-rng:1@0,1']")
    paths, keys = _clean(factory)
    code, report = _audit(*paths, weak.manifests[0], keys=[*keys, weak.pubkey])
    assert code == 1 and _kinds(report) == ["duplicate-key", "duplicate-key"]
    imeis = {d["imei"] for d in json.loads(weak.manifests[0].read_text())["signed"]["devices"]
             if d["port"] in ("sim://0", "sim://1")}
    for finding in report["findings"]:
        assert {e["imei"] for e in finding["evidence"]} == imeis
        assert {e["manifest"] for e in finding["evidence"]} == {str(weak.manifests[0])}
        assert {e["sec_tag"] for e in finding["evidence"]} in ({TLS}, {ENDORSEMENT})
        assert all(e["run_id"] and e["station"] == "line3" for e in finding["evidence"])


def _clone_imeis(state: Path, into: Path) -> None:
    """The simulator's state with every modem under a new IMEI: cloned modules."""
    doc = json.loads(state.read_text())
    for modem in doc["modems"]:
        body = "49" + modem["imei"][2:14]
        modem["imei"] = body + luhn_digit(body)
    into.mkdir()
    (into / "sim.json").write_text(json.dumps(doc))


def test_one_device_uuid_under_two_imeis_is_a_clone(factory: dict[str, Station],
                                                    tmp_path: Path) -> None:
    line1 = factory["line1"]
    _clone_imeis(line1.directory / "sim.json", tmp_path / "line4")
    clones = _station(tmp_path / "line4", "line4", ports="sim://0-2", seed=0,
                      slot_keys="[endorsement]")
    paths, keys = _clean(factory)
    code, report = _audit(*paths, clones.manifests[0], keys=[*keys, clones.pubkey])
    assert code == 1
    assert _kinds(report) == ["duplicate-key"] * 3 + ["cloned-uuid"] * 3
    for finding in report["findings"]:
        assert {e["station"] for e in finding["evidence"]} == {"line1", "line4"}
        assert len({e["imei"] for e in finding["evidence"]}) == 2


def test_an_imei_with_a_new_key_in_the_same_tag_is_reprovisioned(factory: dict[str, Station],
                                                                  tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(factory["line1"].directory, again,
                    ignore=shutil.ignore_patterns("out", "*.sqlite*", ".fleet"))
    replaced = _station(again, "line1", ports="sim://0-2", seed=0,
                        keys=CA_KEYS.replace("if_exists: keep", "if_exists: replace"),
                        plan_name="replace.yaml")
    paths, keys = _clean(factory)
    code, report = _audit(*paths, replaced.manifests[0], keys=keys)
    assert code == 1 and _kinds(report) == ["reprovisioned-imei"] * 3
    for finding in report["findings"]:
        assert f"sec_tag {TLS}" in finding["detail"]
        manifests = {e["manifest"] for e in finding["evidence"]}
        assert str(replaced.manifests[0]) in manifests and len(finding["evidence"]) == 2


@pytest.mark.forged_manifests("foreign.json", "tampered.json")
def test_a_foreign_certificate_and_a_tampered_manifest(factory: dict[str, Station],
                                                       tmp_path: Path) -> None:
    line1 = factory["line1"]
    signed = json.loads(line1.manifests[0].read_text())["signed"]
    one, two = signed["devices"][0]["keys"][0], signed["devices"][1]["keys"][0]
    one["certificate"], two["certificate"] = two["certificate"], one["certificate"]
    key = load_signing_key(line1.directory / "keys" / "station.pem")
    foreign = write_manifest(tmp_path / "foreign.json", sign(signed, key))
    code, report = _audit(foreign, *line1.manifests, keys=[line1.pubkey])
    assert code == 1
    assert _kinds(report) == ["foreign-certificate"] * 2 + ["unverified-manifest"]
    first = report["findings"][0]
    assert first["evidence"][0]["manifest"] == str(foreign)
    assert signed["devices"][1]["imei"] in first["detail"]
    assert "inventoried" not in report["findings"][-1]["detail"]

    document = json.loads(line1.manifests[1].read_text())
    document["signed"]["devices"][0]["slot"] = "slot9"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    code, report = _audit(tampered, keys=[line1.pubkey])
    assert code == 1 and _kinds(report) == ["unverified-manifest"]
    assert "does NOT verify" in report["findings"][0]["detail"]
    assert "nothing it says was inventoried" in report["findings"][0]["detail"]
    assert report["devices"] == 0
    # a station whose key is not given is not trusted: its manifests are not inventoried
    code, report = _audit(factory["line2"].manifests[0], keys=[line1.pubkey])
    assert code == 1 and _kinds(report) == ["unverified-manifest"]


def test_one_board_at_two_stations(factory: dict[str, Station], tmp_path: Path) -> None:
    (tmp_path / "line5").mkdir()
    shutil.copy(factory["line2"].directory / "sim.json", tmp_path / "line5" / "sim.json")
    moved = _station(tmp_path / "line5", "line5", ports="sim://0-1", seed=1,
                     slot_keys="[endorsement]")
    paths, keys = _clean(factory)
    code, report = _audit(*paths, moved.manifests[0], keys=[*keys, moved.pubkey])
    assert code == 1 and _kinds(report) == ["several-stations"] * 2
    assert all({e["station"] for e in f["evidence"]} == {"line2", "line5"}
               for f in report["findings"])


@pytest.mark.forged_manifests("m.json")
def test_usage_errors(tmp_path: Path) -> None:
    missing = fleet("audit", tmp_path / "nope")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    empty = fleet("audit", tmp_path)
    assert empty.returncode == 2 and "no manifest" in empty.stderr
    (tmp_path / "bad.pem").write_text("not a key")
    (tmp_path / "m.json").write_text("{}")
    bad_key = fleet("audit", tmp_path, "--pubkey", tmp_path / "bad.pem")
    assert bad_key.returncode == 2 and "Traceback" not in bad_key.stderr


def _scale(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "audit_scale.py"), "--dir",
                           str(directory), *args], capture_output=True, text=True, check=False,
                          timeout=3600)


def test_the_scale_script_makes_manifests_that_audit_clean(tmp_path: Path) -> None:
    result = _scale(tmp_path / "scale", "--devices", "30", "--manifests", "3", "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "30 device record(s), 60 key(s): clean" in result.stdout
    assert "audit: exit 0" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_an_audit_of_100000_devices_in_500_manifests(tmp_path: Path) -> None:
    result = _scale(tmp_path / "scale")
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"audit: exit 0, ([\d.]+) s wall, peak RSS (\d+) MiB", result.stdout)
    assert match, result.stdout
    assert float(match[1]) < 60 and int(match[2]) < 1024, result.stdout
