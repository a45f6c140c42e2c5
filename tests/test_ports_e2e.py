"""`fleet ports` and usb: slots end to end: a fake host tree of 8 nRF9160 DKs (3 CDC ACM
interfaces each) and 8 production boards on hub positions (USB-serial bridges, half without a
serial number), whose AT ports are simulator modems on real ptys; the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet.journal import Journal
from fleet.usbid import UsbIdentity
from fleet.usbports import ROOT_ENV
from tests.runhelpers import KEYS, fleet
from tests.simproc import SimProcess, run_sim
from tests.usbtree import DK_SERIAL_PREFIX, UsbTree

KITS = 8
BOARDS = 8
READ_ONLY = {"AT", "AT+CGSN=1", "AT+CGMR", "AT+CGMM"}
HEADER = ("version: 1\nstation: line1-a\nsigning_key: keys/station.pem\n"
          "throwaway_signing_key: true\nmanifest: out/{station}-{run_id}.json\n"
          "defaults: {timeout_s: 5, keygen_timeout_s: 10, retries: 2}\n") + textwrap.dedent(KEYS)


def dk_serial(i: int) -> str:
    return f"{DK_SERIAL_PREFIX}{10000 + i:05d}"


def board_serial(i: int) -> str | None:
    return f"CP{i:06d}" if i % 2 == 0 else None  # every other board has no serial number


class Station:
    """The sim, the fake tree over its ptys, and a plan directory."""

    def __init__(self, sim: SimProcess, root: Path, work: Path) -> None:
        self.sim = sim
        self.tree = UsbTree(root)
        self.work = work
        self.env = {ROOT_ENV: str(root)}
        self.tree.add_device("1-1", vid="05e3", pid="0610", product="USB2.0 Hub")
        self.tree.add_device("2-1", vid="05e3", pid="0610", product="USB2.0 Hub")
        for i in range(KITS):
            self.tree.add_board(f"1-1.{i + 1}", serial=dk_serial(i),
                                targets=[self.pty(i), None, None])
        for i in range(BOARDS):
            self.add_production_board(i, modem=KITS + i, serial=board_serial(i))

    def pty(self, modem: int) -> str:
        return os.path.realpath(self.sim.ports[modem])

    def add_production_board(self, i: int, *, modem: int, serial: str | None) -> None:
        self.tree.add_board(f"2-1.{i + 1}", serial=serial, vid="10c4", pid="ea60",
                            manufacturer="Silicon Labs", product="CP2102N", bridge=True,
                            targets=[self.pty(modem)])

    def imei(self, modem: int) -> str:
        imei: str = self.sim.modem_state(modem)["imei"]
        return imei

    def fleet(self, *args: str | Path) -> tuple[int, str, str]:
        result = fleet(*args, cwd=self.work, env=self.env, timeout=300)
        return result.returncode, result.stdout, result.stderr

    def run(self, plan: Path, *args: str) -> tuple[int, dict[str, Any]]:
        code, out, err = self.fleet("run", plan, "--json", *args)
        assert out, err
        return code, json.loads(out)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    (tmp_path / "sim").mkdir()
    with run_sim(tmp_path / "sim", KITS + 2 * BOARDS) as process:
        yield process


@pytest.fixture
def station(sim: SimProcess, tmp_path: Path) -> Station:
    return Station(sim, tmp_path / "root", tmp_path)


def test_ports_probe_lists_every_port_with_its_kit_and_the_imeis(station: Station) -> None:
    before = len(station.sim.log_lines())
    code, out, err = station.fleet("ports", "--probe", "--json")
    assert code == 0, err
    # Said before the wait, on stderr: the JSON document on stdout is the only output there.
    assert "fleet ports: probing 16 port(s) at once" in err, err
    ports = json.loads(out)["ports"]
    assert len(ports) == KITS * 3 + BOARDS
    dks = [p for p in ports if p["kit"] == "nRF9160 DK"]
    assert len(dks) == KITS * 3 and {p["serial"] for p in dks} == {dk_serial(i)
                                                                   for i in range(KITS)}
    at_ports = [p for p in ports if p["at_port"]]
    assert [p["location"] for p in at_ports] == [f"1-1.{i + 1}" for i in range(KITS)]
    assert all(p["interface"] == 0 for p in at_ports)
    assert all("probe" not in p for p in dks if not p["at_port"])  # never sent anything
    answered = {p["location"]: p["probe"] for p in ports if "probe" in p}
    expected = {f"1-1.{i + 1}": station.imei(i) for i in range(KITS)}
    expected |= {f"2-1.{i + 1}": station.imei(KITS + i) for i in range(BOARDS)}
    assert {loc: probe["imei"] for loc, probe in answered.items()} == expected
    assert {(probe["interface"], probe["terminator"]) for probe in answered.values()} == {
        ("at", "cr")}
    boards = [p for p in ports if p["location"].startswith("2-1.")]
    assert {p["kit"] for p in boards} == {None} and {p["at_port"] for p in boards} == {None}
    assert [p["serial"] for p in boards] == [board_serial(i) for i in range(BOARDS)]
    linked = [bool(p["by_path"]) and bool(p["by_id"]) == bool(p["serial"]) for p in ports]
    assert all(linked)  # by-id links only where there is a serial number
    sent = {line["command"] for line in station.sim.log_lines()[before:]}
    assert sent <= READ_ONLY, sent - READ_ONLY
    code, out, err = station.fleet("ports")
    assert code == 0 and out.count("nRF9160 DK") == KITS * 3, out


def test_the_plan_ports_prints_is_one_fleet_run_completes(station: Station) -> None:
    code, out, err = station.fleet("ports", "--plan")
    assert code == 0, err
    assert out.count("usb:serial=") == KITS + BOARDS // 2
    assert out.count("usb:location=") == BOARDS // 2
    plan = station.work / "plan.yaml"
    plan.write_text(HEADER + out)
    code, document = station.run(plan)
    assert code == 0, document
    devices = document["devices"]
    assert [d["outcome"] for d in devices] == ["done"] * (KITS + BOARDS)
    imeis = {d["imei"] for d in devices}
    assert imeis == {station.imei(m) for m in range(KITS + BOARDS)}
    manifest = json.loads(Path(document["manifest"]).read_text())["signed"]
    kits = {d["slot"]: d["usb"] for d in manifest["devices"]}
    assert kits[f"nrf9160-dk-{dk_serial(3)}"] == {
        "vid": "1366", "pid": "1055", "serial": dk_serial(3), "location": "1-1.4",
        "interface": 0, "kit": "nRF9160 DK"}
    assert kits["usb-2-1.2"]["serial"] is None and kits["usb-2-1.2"]["location"] == "2-1.2"


def location_plan(station: Station) -> Path:
    plan = station.work / "hub.yaml"
    plan.write_text(HEADER + "slots:\n  - name: hub\n    port: usb:location=2-1.*\n"
                    "    keys: [tls, endorsement]\n")
    return plan


def test_location_slots_provision_whatever_board_sits_there(station: Station) -> None:
    plan = location_plan(station)
    code, first = station.run(plan)
    assert code == 0, first
    slots = [f"hub-2-1.{i + 1}" for i in range(BOARDS)]
    assert [d["slot"] for d in first["devices"]] == slots
    old = [station.imei(KITS + i) for i in range(BOARDS)]
    assert [d["imei"] for d in first["devices"]] == old
    # Swap every board for another (other modems, other serial numbers) and leave position
    # 2-1.3 empty for a moment: the other slots keep their names.
    for i in range(BOARDS):
        station.tree.remove_board(f"2-1.{i + 1}")
    for i in range(BOARDS):
        if i != 2:
            station.add_production_board(i, modem=KITS + BOARDS + i, serial=f"NEW{i}")
    code, partial = station.run(plan)
    assert code == 0, partial
    assert [d["slot"] for d in partial["devices"]] == [s for s in slots if s != "hub-2-1.3"]
    station.add_production_board(2, modem=KITS + BOARDS + 2, serial="NEW2")
    code, second = station.run(plan)
    assert code == 0, second
    new = [station.imei(KITS + BOARDS + i) for i in range(BOARDS)]
    assert [d["slot"] for d in second["devices"]] == slots
    assert [d["imei"] for d in second["devices"]] == new
    assert [d["usb"]["serial"] for d in second["devices"]] == [f"NEW{i}" for i in range(BOARDS)]
    outcomes = {d["slot"]: {k["outcome"] for k in d["keys"]} for d in second["devices"]}
    assert outcomes.pop("hub-2-1.3") == {"generated"}  # the board that came last
    assert set(map(frozenset, outcomes.values())) == {frozenset({"unchanged"})}
    # The old boards' records are kept: their manifest, and the journal knows their keys.
    manifest = json.loads(Path(first["manifest"]).read_text())["signed"]
    assert [d["imei"] for d in manifest["devices"]] == old
    journal = station.work / ".fleet" / "hub.journal.sqlite"
    with sqlite3.connect(journal) as conn:
        known = {row[0] for row in conn.execute("SELECT imei FROM keys WHERE state = 'captured'")}
    assert set(old) | set(new) <= known
    # An old board back in its position: nothing to make, its keys are the journal's.
    station.tree.remove_board("2-1.1")
    station.add_production_board(0, modem=KITS, serial=board_serial(0))
    code, back = station.run(plan)
    assert code == 0 and back["devices"][0]["imei"] == old[0], back
    assert {k["outcome"] for k in back["devices"][0]["keys"]} == {"unchanged"}


def test_a_record_from_an_earlier_invocation_keeps_its_usb_identity(station: Station) -> None:
    plan = location_plan(station)
    code, first = station.run(plan, "--only", "hub-2-1.1")
    assert code == 0, first
    old = first["devices"][0]["usb"]
    assert old["serial"] == board_serial(0)
    # Another board in 2-1.1 now; the run's earlier record of that slot still says what was
    # there then.
    station.tree.remove_board("2-1.1")
    station.add_production_board(0, modem=KITS + BOARDS, serial="OTHER")
    code, second = station.run(plan, "--only", "hub-2-1.2")
    assert code == 0 and second["resumed"], second
    by_slot = {d["slot"]: d for d in second["devices"]}
    assert by_slot["hub-2-1.1"]["usb"] == old
    assert by_slot["hub-2-1.1"]["imei"] == station.imei(KITS)


REFUSED = (("usb:serial=DUP", "reported by 2 boards"),
           ("usb:location=2-1", "without a serial port"),
           ("usb:serial=ZZ9", "add ,interface=N"),
           ("usb:location=3-*", "no serial port on this host"))


def test_refused_forms_send_nothing(station: Station) -> None:
    station.tree.add_board("2-1.20", serial="DUP", vid="10c4", pid="ea60", bridge=True,
                           targets=[station.pty(0)])
    station.tree.add_board("2-1.21", serial="DUP", vid="10c4", pid="ea60", bridge=True,
                           targets=[station.pty(1)])
    station.tree.add_board("2-1.22", serial="ZZ9", vid="1915", pid="520f", bridge=False,
                           targets=[station.pty(2), station.pty(3)])
    before = len(station.sim.log_lines())
    for form, words in REFUSED:
        plan = station.work / "bad.yaml"
        plan.write_text(HEADER + f"slots:\n  - port: {form}\n    keys: [tls]\n"
                        "  - port: usb:location=2-1.1\n    keys: [tls]\n")
        code, document = station.run(plan)
        assert code == 2 and words in document["error"], document
        assert "Traceback" not in document["error"]
    code, _, err = station.fleet("plan", "check", plan)
    assert code == 2 and REFUSED[-1][1] in err and "bad.yaml:" in err, err
    assert len(station.sim.log_lines()) == before  # nothing was sent, to any board


def test_an_older_journal_gets_the_usb_column(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def open_and_close() -> None:
        journal = await Journal.open(path, station="s", plan="p")
        await journal.aclose()

    anyio.run(open_and_close, backend="asyncio")
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE run_devices DROP COLUMN usb")
    usb = UsbIdentity(vid="10c4", pid="ea60", serial=None, location="2-1.1", interface=0)

    async def use() -> None:
        journal = await Journal.open(path, station="s", plan="p")
        try:
            await journal.slot_result(run_id="r", slot="a", port="/dev/ttyUSB0", imei=None,
                                      outcome="failed", error="x", usb=usb)
            report = await journal.run_report("r")
        finally:
            await journal.aclose()
        assert report.slots[0].usb == usb

    anyio.run(use, backend="asyncio")
