"""Nordic's nrfcredstore 2.1 against the simulator's shell, as against a real device: it finds
the shell itself (`--cmd-type auto`) or is told (`shell`), lists, and generates a key and CSR;
the same through the AT host. Through scripts/nrfcredstore-pty, which lets it open a pty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fleet.credentials import strip_sigalg_null
from tests.runhelpers import REPO
from tests.simproc import run_sim

WRAPPER = REPO / "scripts" / "nrfcredstore-pty"


def nrfcredstore(port: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(WRAPPER), str(port), *args], text=True,
                          capture_output=True, timeout=120, check=False)


@pytest.mark.parametrize(("sim", "cmd_type"), [
    (("--interface", "shell"), "shell"),  # Zephyr's defaults: wildcards on, 256-byte buffer
    (("--interface", "shell"), "auto"),
    ((), "auto"),
])
def test_nrfcredstore_lists_and_generates(tmp_path: Path, sim: tuple[str, ...],
                                          cmd_type: str) -> None:
    with run_sim(tmp_path, 1, *sim) as simulator:
        port = simulator.ports[0]
        listed = nrfcredstore(port, "--cmd-type", cmd_type, "list")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "DEV_ID_PUB_KEY" in listed.stdout and "CLIENT_KEY" not in listed.stdout
        csr = tmp_path / "csr.der"
        made = nrfcredstore(port, "--cmd-type", cmd_type, "generate", "123", str(csr),
                            "--attributes", "CN=bench,O=Acme")
        assert made.returncode == 0, made.stdout + made.stderr
        # the modem's CSR, NULL parameter and all, as the modem makes it
        request = x509.load_der_x509_csr(strip_sigalg_null(csr.read_bytes()) or b"")
        assert request.subject.rfc4514_string() == "O=Acme,CN=bench"
        listed = nrfcredstore(port, "--cmd-type", cmd_type, "list")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith("123 "))
        stored = next(c for c in simulator.modem_state(0)["credentials"] if c["sec_tag"] == 123)
        assert row.split() == ["123", "CLIENT_KEY", stored["sha256"]]
