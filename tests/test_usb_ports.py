"""The USB identity of the host's serial ports, from fake sysfs trees: kits with several
interfaces, hubs, a board without a serial number, USB-serial bridges, a platform UART; which
ports the usb: forms of a plan name, and the plan errors that refuse the others."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import pytest

from fleet.cmd.plan import plan_document
from fleet.errors import PlanError
from fleet.manifest.shape import check_device
from fleet.nrf91 import kit_of, unknown_nordic_kit
from fleet.plan import load_plan
from fleet.portprobe import probe_ports
from fleet.porturl import UsbPorts, parse_port
from fleet.usbid import UsbIdentity
from fleet.usbports import ROOT_ENV, scan, select
from tests.runhelpers import fleet, write_plan
from tests.simproc import LINES, run_sim
from tests.test_first_contact import pty_peer, zephyr_shell
from tests.usbtree import UsbTree


def station(root: Path) -> UsbTree:
    """A hub, an nRF9160 DK (3 interfaces), a CP2102 bridge, an FTDI bridge without a serial
    number, an unknown Nordic kit with two interfaces, and a platform UART."""
    tree = UsbTree(root)
    tree.add_device("1-1", vid="05e3", pid="0610", product="USB2.0 Hub")
    tree.add_board("1-1.1", serial="000960012345", targets=[None, None, None])
    tree.add_board("1-1.2", serial="A1B2", vid="10c4", pid="ea60", manufacturer="Silicon Labs",
                   product="CP2102", bridge=True, targets=[None])
    tree.add_board("1-1.3", serial=None, vid="0403", pid="6001", manufacturer="FTDI",
                   product="FT232R", bridge=True, targets=[None])
    tree.add_board("1-1.10", serial="001059900001", targets=[None, None])
    tree.add_platform_tty()
    return tree


def test_the_scan_reads_what_pyserial_reads(tmp_path: Path) -> None:
    station(tmp_path)
    host = scan(tmp_path)
    names = [p.name for p in host.ports]
    assert names == ["ttyACM0", "ttyACM1", "ttyACM2", "ttyUSB0", "ttyUSB1", "ttyACM3",
                     "ttyACM4"]  # by hub position (1-1.10 after 1-1.3), platform UART left out
    dk = host.ports[:3]
    assert [p.interface for p in dk] == [0, 1, 2]
    assert [p.at_port for p in dk] == [True, False, False]
    assert {p.kit.name if p.kit else None for p in dk} == {"nRF9160 DK"}
    assert dk[0].subsystem == "usb" and host.ports[3].subsystem == "usb-serial"
    assert dk[0].by_id == (str(tmp_path / "dev/serial/by-id/usb-SEGGER_J-Link_000960012345-if00"),)
    assert dk[2].by_path == (str(tmp_path / "dev/serial/by-path/pci-0000:00:14.0-usb-0:1.1:1.2"),)
    bridge = host.ports[3]
    assert bridge.identity() == UsbIdentity(vid="10c4", pid="ea60", serial="A1B2",
                                            location="1-1.2", interface=0, kit=None)
    assert bridge.at_port is None and host.ports[4].board is not None
    assert host.ports[4].board.serial is None
    assert [d.location for d in host.devices] == ["1-1", "1-1.1", "1-1.2", "1-1.3", "1-1.10"]


def test_the_kit_table() -> None:
    assert kit_of("000960012345", "J-Link") is not None
    assert kit_of("001051200001", None).name == "nRF9151 DK"  # type: ignore[union-attr]
    assert kit_of("001052000001", None).name == "nRF9151 DK"  # type: ignore[union-attr]
    assert kit_of(None, "THINGY91X").name == "Thingy:91 X"  # type: ignore[union-attr]
    assert kit_of(None, "Thingy91").name == "Thingy:91"  # type: ignore[union-attr]
    assert kit_of("A1B2", "CP2102") is None
    assert unknown_nordic_kit("001059900001") and not unknown_nordic_kit("000960012345")


def names(form: str, root: Path) -> list[str]:
    url = parse_port(form)
    assert isinstance(url, UsbPorts)
    return [p.name for p in select(url, scan(root))]


def test_each_form_names_one_port_per_board(tmp_path: Path) -> None:
    station(tmp_path)
    assert names("usb:serial=000960012345", tmp_path) == ["ttyACM0"]  # the kit's AT port
    assert names("usb:serial=000960012345,interface=2", tmp_path) == ["ttyACM2"]
    assert names("usb:serial=A1B2", tmp_path) == ["ttyUSB0"]  # its only port
    assert names("usb:vid=10C4,pid=EA60", tmp_path) == ["ttyUSB0"]
    assert names("usb:vid=1366,pid=1055,interface=1", tmp_path) == ["ttyACM1", "ttyACM4"]
    assert names("usb:location=1-1.3", tmp_path) == ["ttyUSB1"]  # no serial number needed
    assert names("usb:location=1-1.10,interface=1", tmp_path) == ["ttyACM4"]


@pytest.mark.parametrize(("form", "words"), [
    ("usb:serial=001059900001", ("2 serial ports", "unknown Nordic kit", "interface=N")),
    ("usb:location=1-1.*", ("unknown Nordic kit", "interface=N")),
    ("usb:serial=000960012345,interface=5", ("no serial port on interface 5", "0, 1, 2")),
    ("usb:serial=NOPE", ("USB serial number NOPE", "fleet ports")),
    ("usb:location=1-1", ("without a serial port", "USB2.0 Hub", "05e3:0610")),
    ("usb:location=2-*", ("no serial port", "location 2-*")),
])
def test_forms_that_cannot_name_a_port_say_why(tmp_path: Path, form: str,
                                               words: tuple[str, ...]) -> None:
    station(tmp_path)
    with pytest.raises(ValueError) as caught:
        names(form, tmp_path)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_a_serial_number_two_boards_report_is_refused(tmp_path: Path) -> None:
    tree = station(tmp_path)
    tree.add_board("1-1.4", serial="A1B2", vid="10c4", pid="ea60", bridge=True, targets=[None])
    with pytest.raises(ValueError, match=r"reported by 2 boards .*1-1\.2.*1-1\.4.*location"):
        names("usb:serial=A1B2", tmp_path)


@pytest.mark.parametrize(("form", "words"), [
    ("usb:serial=", "not name=value"),
    ("usb:serial=1,location=1-1", "one way"),
    ("usb:vid=1366", "one way"),
    ("usb:vid=13G6,pid=1055", "four hex digits"),
    ("usb:location=1-1.4,interface=x", "interface number"),
    ("usb:colour=red", "unknown field"),
    ("usb:location=/dev/tty*", "USB port path"),
])
def test_malformed_forms(form: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_port(form)


def test_a_glob_over_positions_skips_hubs_but_an_exact_hub_is_an_error(tmp_path: Path) -> None:
    tree = UsbTree(tmp_path)
    tree.add_device("1-1", vid="05e3", pid="0610", product="USB2.0 Hub")
    tree.add_device("1-1.9", vid="046d", pid="c31c", product="Keyboard")
    tree.add_board("1-1.2", serial="X", vid="10c4", pid="ea60", bridge=True, targets=[None])
    assert names("usb:location=1-1*", tmp_path) == ["ttyUSB0"]
    with pytest.raises(ValueError, match="Keyboard"):
        names("usb:location=1-1.9", tmp_path)
    with pytest.raises(ValueError, match="Keyboard"):
        names("usb:location=1-1.9*", tmp_path)


def test_plans_expand_usb_forms_and_name_location_slots_after_the_position(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    station(tmp_path / "root")
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "root"))
    plan = load_plan(write_plan(tmp_path, ports="usb:location=1-1.[123]"))
    assert [s.name for s in plan.slots] == ["usb-1-1.1", "usb-1-1.2", "usb-1-1.3"]
    assert [s.port for s in plan.slots] == [str(tmp_path / "root/dev") + f"/{n}"
                                            for n in ("ttyACM0", "ttyUSB0", "ttyUSB1")]
    assert plan.slots[0].usb is not None and plan.slots[0].usb.kit == "nRF9160 DK"
    shown = plan_document(plan)["slots"]  # what `fleet plan check --json` prints
    assert [s["usb"]["location"] for s in shown] == ["1-1.1", "1-1.2", "1-1.3"]
    assert shown[2]["usb"]["serial"] is None
    text = (tmp_path / "plan.yaml").read_text().replace(
        '  - port: "usb:location=1-1.[123]"',
        '  - name: dk\n    port: "usb:serial=000960012345"\n    keys: [tls]\n'
        '  - name: pos\n    port: "usb:location=1-1.3"\n    keys: [tls]\n'
        '  - name: hub\n    port: ["usb:location=1-1.2"]')
    (tmp_path / "plan.yaml").write_text(text)
    plan = load_plan(tmp_path / "plan.yaml")
    assert [s.name for s in plan.slots] == ["dk", "pos", "hub-1-1.2"]


def test_plan_errors_name_the_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = station(tmp_path / "root")
    tree.add_board("1-1.4", serial="A1B2", vid="10c4", pid="ea60", bridge=True, targets=[None])
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "root"))
    plans = [(write_plan(tmp_path, ports=form, name=f"p{i}.yaml"), words) for i, (form, words)
             in enumerate((("usb:serial=A1B2", "reported by 2 boards"),
                           ("usb:location=1-1", "without a serial port"),
                           ("usb:serial=001059900001", "add ,interface=N")))]
    plans.append((_two_entries(tmp_path), "already used by slot"))
    for path, words in plans:
        with pytest.raises(PlanError) as caught:
            load_plan(path)
        text = "\n".join(caught.value.errors)
        assert f"{path.name}:" in text and words in text, (path, text)


def _two_entries(tmp_path: Path) -> Path:
    """Two entries that name one port (a position and the same board's serial number)."""
    path = write_plan(tmp_path, ports="usb:location=1-1.3", name="two.yaml")
    path.write_text(path.read_text() + '  - port: "usb:vid=0403,pid=6001"\n'
                    "    keys: [tls]\n  - port: usb:location=1-1.[23]\n    keys: [tls]\n")
    return path


def test_the_manifest_shape_of_usb() -> None:
    device = {"slot": "a", "port": "/dev/ttyACM0", "imei": None, "device_uuid": None,
              "model": None, "firmware": None, "outcome": "failed", "error": "x", "keys": []}
    problems: list[str] = []

    def fail(name: str, detail: str, where: str) -> None:
        problems.append(detail)

    good = UsbIdentity(vid="1366", pid="1055", serial=None, location="1-1.4", interface=0)
    assert check_device({**device, "usb": good.to_dict()}, "d", fail)[0] and not problems
    assert check_device(device, "d", fail)[0]  # optional
    for bad, words in (({**good.to_dict(), "vid": "13G6"}, "four lower-case hex"),
                       ({**good.to_dict(), "location": "/dev/x"}, "USB port path"),
                       ({**good.to_dict(), "interface": "0"}, "expected integer"),
                       ("1-1.4", "expected an object")):
        problems.clear()
        assert not check_device({**device, "usb": bad}, "d", fail)[0]
        assert any(words in p for p in problems), (words, problems)


@pytest.mark.parametrize("interface", sorted(LINES))
def test_the_probe_reports_the_line_found_and_a_port_it_cannot_open(tmp_path: Path,
                                                                    interface: str) -> None:
    tree = UsbTree(tmp_path / "root")
    with run_sim(tmp_path, 1, *LINES[interface]) as sim:
        tree.add_board("1-1.1", serial="S1", vid="1915", pid="520f", targets=[sim.ports[0]])
        tree.add_board("1-1.2", serial="S2", vid="10c4", pid="ea60", bridge=True, targets=[None])
        ports = [p.device for p in scan(tmp_path / "root").ports]
        results = anyio.run(lambda: probe_ports(ports, probe_timeout=1.0), backend="asyncio")
        imei = sim.modem_state(0)["imei"]
        sent = sim.commands(0)
    first, second = (results[p] for p in ports)
    assert (first.answered, first.interface, first.terminator, first.imei) == (
        True, interface, "cr", imei), first
    writes = ("AT%KEYGEN", "AT%CMNG=0", "AT%CMNG=3", "AT+CFUN=", "AT+CMEE")
    assert sent and not [c for c in sent if c.startswith(writes)], sent
    assert not second.answered and second.interface is None
    assert "cannot open" in (second.error or ""), second


def test_the_probe_names_a_shell_that_does_not_pass_at_commands(tmp_path: Path) -> None:
    tree = UsbTree(tmp_path / "root")
    with pty_peer(zephyr_shell) as shell:
        tree.add_board("1-1.1", serial="S1", vid="1915", pid="520f", targets=[shell])
        ports = [p.device for p in scan(tmp_path / "root").ports]
        results = anyio.run(lambda: probe_ports(ports, probe_timeout=0.3), backend="asyncio")
    (only,) = results.values()
    assert not only.answered
    assert "Zephyr shell" in (only.error or ""), only


def test_ports_names_the_processes_holding_a_port(tmp_path: Path) -> None:
    master, slave = os.openpty()
    holder = subprocess.Popen(["sleep", "60"], stdin=slave)
    try:
        tree = UsbTree(tmp_path / "root")
        tree.add_board("1-1.1", serial="S1", vid="10c4", pid="ea60", bridge=True,
                       targets=[os.ttyname(slave)])
        result = fleet("ports", "--json", env={ROOT_ENV: str(tmp_path / "root")})
        assert result.returncode == 0, result.stderr
        port = json.loads(result.stdout)["ports"][0]
        assert [o["pid"] for o in port["openers"]] == [holder.pid]
        text = fleet("ports", env={ROOT_ENV: str(tmp_path / "root")}).stdout
        assert f"held open by pid {holder.pid} (sleep 60)" in text, text
    finally:
        holder.kill()
        holder.wait()
        os.close(slave)
        os.close(master)
