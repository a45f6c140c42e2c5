"""A plan's `chain:` by name: nRF Cloud's CA certificates as nrfcloud-utils ships them, written
to the device as the root CA of the key's sec_tag."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fleet.certs.bundled import BUNDLED_CHAINS, bundled_chain
from tests.certhelpers import make_ca
from tests.runhelpers import KEYS, fleet, run_json, write_plan

AMAZON_ROOT_CA_1 = "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e"
NRF_CLOUD_COAP_CA = "40471ddd6e21ba63ba94c6f3a6df59c833b51b2e63bb7217f5529bd713435f52"


def _keys(chain: str) -> str:
    return KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n"
                        f"    ca: {{cert: ca/ca.pem, key: ca/ca.key, chain: {chain}}}\n")


def test_the_bundled_certificates_are_the_published_ones() -> None:
    fingerprints = {name: [c.fingerprint(hashes.SHA256()).hex()
                           for c in bundled_chain(name).certificates] for name in BUNDLED_CHAINS}
    assert fingerprints == {"nrfcloud-mqtt": [AMAZON_ROOT_CA_1],
                            "nrfcloud-coap": [AMAZON_ROOT_CA_1, NRF_CLOUD_COAP_CA]}


def test_a_bundled_chain_by_name_is_written_as_the_root_ca(tmp_path: Path) -> None:
    make_ca(tmp_path / "ca")
    plan = write_plan(tmp_path, ports="sim://0", keys=_keys("nrfcloud-coap"), slot_keys="[tls]",
                      extra="simulator: {state: sim.json}\n")
    checked = fleet("plan", "check", plan)
    assert checked.returncode == 0 and "chain nrfcloud-coap" in checked.stdout, checked.stdout
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    key = doc["devices"][0]["keys"][0]
    assert key["ca_chain"]["outcome"] == "written"
    assert key["ca_chain"]["sha256"] == bundled_chain("nrfcloud-coap").sha256
    stored = [c for c in json.loads((tmp_path / "sim.json").read_text())["modems"][0]
              ["credentials"] if c["type"] == 0]
    assert len(stored) == 1
    pems = x509.load_pem_x509_certificates(stored[0]["content"].encode())
    assert [c.fingerprint(hashes.SHA256()).hex() for c in pems] == [AMAZON_ROOT_CA_1,
                                                                     NRF_CLOUD_COAP_CA]


def test_a_name_that_is_also_a_file_is_refused(tmp_path: Path) -> None:
    make_ca(tmp_path / "ca")
    (tmp_path / "nrfcloud-mqtt").write_text("a file")
    plan = write_plan(tmp_path, ports="sim://0", keys=_keys("nrfcloud-mqtt"), slot_keys="[tls]")
    checked = fleet("plan", "check", plan)
    assert checked.returncode == 2
    assert "is both a bundled chain and the file" in checked.stderr + checked.stdout
    assert "write ./nrfcloud-mqtt for the file" in checked.stderr + checked.stdout
