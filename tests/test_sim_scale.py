"""One simulator process serves 256 modems; this test opens all 256 ports at once.

The test process itself then holds well over 512 descriptors, so it uses pyserial's poll()-based
class (the default class uses select(), which fails for descriptors >= 1024) and raises its own
RLIMIT_NOFILE soft limit.
"""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

import pytest
import serial

from fleet.credentials import check_keygen, parse_keygen
from tests.simproc import open_port, read_until_final, run_sim, send

COUNT = 256


@pytest.fixture(autouse=True)
def _more_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.mark.timeout(240)
def test_256_modems_all_open_at_once_all_answer(tmp_path: Path) -> None:
    with run_sim(tmp_path, COUNT) as sim, contextlib.ExitStack() as stack:
        ports: list[serial.Serial] = [stack.enter_context(open_port(link, poll=True))
                                      for link in sim.ports]
        state = {m["index"]: m for m in sim.state()["modems"]}
        start = time.monotonic()
        for port in ports:
            send(port, "AT+CGSN=1")
        answers = [read_until_final(port, timeout=60) for port in ports]
        for index, lines in enumerate(answers):
            assert lines == [f'+CGSN: "{state[index]["imei"]}"', "OK"], index
        assert len({m["imei"] for m in state.values()}) == COUNT

        # every modem makes a key at the same moment: the state writer coalesces the writes,
        # and each answer still comes only after its key is on disk
        for port in ports:
            send(port, "AT%KEYGEN=16842753,8")
        keygens = [read_until_final(port, timeout=60) for port in ports]
        elapsed = time.monotonic() - start
    for index, lines in enumerate(keygens):
        assert lines[-1] == "OK", (index, lines)
        answer = parse_keygen(lines[0])
        assert str(answer.payload.device_uuid) == state[index]["device_uuid"]
        assert all(check.ok for check in check_keygen(answer))
    final = sim.state()["modems"]
    assert all(len(m["credentials"]) == 1 for m in final)
    assert elapsed < 60
