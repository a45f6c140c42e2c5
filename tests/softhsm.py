"""A SoftHSM2 token of the test's own: a configuration and a token directory under tmp_path
(``SOFTHSM2_CONF`` points at it, for this process and the fleet commands it starts), never the
system's token store.

Without SoftHSM2 the tests that use it are skipped, except under CI (``CI`` set), where a
missing module is a failure: `.ci/run` installs it, and the tests must run there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.hsm.token import close_all
from fleet.hsm.uri import DEFAULT_MODULE

__all__ = ["MODULE", "PIN", "SO_PIN", "SoftHsm", "require_softhsm", "softhsm"]

MODULE = DEFAULT_MODULE
PIN = "4711-s3cret"  #: distinctive, so a test can look for it in every output
SO_PIN = "so-0815-pin"


@dataclass
class SoftHsm:
    """The test's token store: ``token`` labels its first token (PIN in ``$FLEET_PIN``)."""

    root: Path
    tokens: Path
    token: str = "fleet"

    def uri(self, obj: str, *, token: str | None = None, extra: str = "") -> str:
        return (f"pkcs11:token={token or self.token};object={obj}"
                f"?pin-source=env:FLEET_PIN{extra}")

    def init_token(self, label: str) -> None:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--pin", PIN, "--so-pin", SO_PIN], check=True, capture_output=True,
                       timeout=60)

    def remove(self) -> Path:
        """Take every token away (as if unplugged); returns where they are kept meanwhile."""
        away = self.root / "unplugged"
        self.tokens.rename(away)
        return away

    def plug_back(self, away: Path) -> None:
        away.rename(self.tokens)


def require_softhsm() -> None:
    """Skip the test when SoftHSM2 is not installed; under CI, fail it."""
    if os.path.exists(MODULE) and shutil.which("softhsm2-util") is not None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"SoftHSM2 is not installed ({MODULE}, softhsm2-util): CI must run the "
                    "PKCS#11 tests (apt-get install softhsm2)")
    pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    require_softhsm()
    root = tmp_path / "softhsm"
    tokens = root / "tokens"
    tokens.mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv("FLEET_PIN", PIN)
    monkeypatch.delenv("FLEET_PKCS11_MODULE", raising=False)
    close_all()  # a module this process loaded earlier read another test's configuration
    hsm = SoftHsm(root=root, tokens=tokens)
    hsm.init_token(hsm.token)
    try:
        yield hsm
    finally:
        close_all()
