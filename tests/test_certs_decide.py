"""The certificate and CA chain decisions: one row per rule of fleet.certs.decide."""

from __future__ import annotations

import pytest

from fleet.certs.decide import (
    CertAction,
    decide_certificate,
    decide_chain,
    needs_device_certificate,
)
from fleet.records import CertOutcome
from fleet.state import CertState

CSR, OLD_CSR = "c" * 64, "0" * 64
TAG = 16842753
MINE, OTHER, THEIRS = "A" * 64, "B" * 64, "F" * 64


def known(state: str, sha: str = MINE, source: str | None = CSR) -> CertState:
    return CertState(imei="352656100367872", sec_tag=16842753, type=1, state=state,
                     source_sha256=source, pem="-----BEGIN CERTIFICATE-----\n...", sha256=sha)


# (device SHA, journal, device cert carries the key, if_exists) -> (read needed, action, outcome)
CERTIFICATE: list[tuple[str, str | None, CertState | None, bool | None, str,
                        bool, CertAction, CertOutcome]] = [
    ("confirmed here", MINE, known("confirmed"), None, "keep",
     False, CertAction.NOTHING, CertOutcome.UNCHANGED),
    ("written, its answer lost", MINE, known("issued"), None, "keep",
     False, CertAction.NOTHING, CertOutcome.ISSUED),
    ("signed, crash before the write", None, known("issued"), None, "keep",
     False, CertAction.WRITE, CertOutcome.ISSUED),
    ("confirmed, since deleted", None, known("confirmed"), None, "keep",
     False, CertAction.WRITE, CertOutcome.REWRITTEN),
    ("confirmed, since overwritten", OTHER, known("confirmed"), None, "keep",
     False, CertAction.WRITE, CertOutcome.REWRITTEN),
    ("nothing anywhere", None, None, None, "keep",
     False, CertAction.SIGN, CertOutcome.ISSUED),
    ("key generated again: old cert gone", None, known("confirmed", source=OLD_CSR), None,
     "keep", False, CertAction.SIGN, CertOutcome.ISSUED),
    ("key generated again: old cert there", MINE, known("confirmed", source=OLD_CSR), None,
     "keep", False, CertAction.SIGN, CertOutcome.ISSUED),
    ("foreign cert for this key, keep", THEIRS, None, True, "keep",
     True, CertAction.KEEP, CertOutcome.PRE_EXISTING),
    ("foreign cert for this key, replace", THEIRS, None, True, "replace",
     True, CertAction.SIGN, CertOutcome.ISSUED),
    ("foreign cert for this key, fail", THEIRS, None, True, "fail",
     True, CertAction.FAIL, CertOutcome.FAILED),
    ("foreign cert for another key", THEIRS, None, False, "keep",
     True, CertAction.SIGN, CertOutcome.ISSUED),
    ("foreign cert for another key, fail", THEIRS, None, False, "fail",
     True, CertAction.FAIL, CertOutcome.FAILED),
    ("kept before, still there", THEIRS, known("pre-existing", sha=THEIRS), None, "keep",
     False, CertAction.KEEP, CertOutcome.PRE_EXISTING),
    ("kept before, key generated again", THEIRS,
     known("pre-existing", sha=THEIRS, source=OLD_CSR), False, "keep",
     True, CertAction.SIGN, CertOutcome.ISSUED),
    ("fleet's for an old CSR, then a foreign one", THEIRS, known("confirmed", source=OLD_CSR),
     True, "keep", True, CertAction.KEEP, CertOutcome.PRE_EXISTING),
]


@pytest.mark.parametrize(("case", "device", "journal", "matches", "if_exists", "read", "action",
                          "outcome"), CERTIFICATE, ids=[row[0] for row in CERTIFICATE])
def test_certificate_decision(case: str, device: str | None, journal: CertState | None,
                              matches: bool | None, if_exists: str, read: bool,
                              action: CertAction, outcome: CertOutcome) -> None:
    assert needs_device_certificate(device_sha=device, journal=journal, csr_sha256=CSR) is read
    decision = decide_certificate(sec_tag=TAG, device_sha=device, journal=journal, csr_sha256=CSR,
                                  device_cert_matches_key=matches, if_exists=if_exists)
    assert (decision.action, decision.outcome) == (action, outcome), decision.reason
    assert decision.writes is (action in (CertAction.SIGN, CertAction.WRITE))
    assert decision.reason
    if action is CertAction.FAIL:
        assert "delete it with AT%CMNG=3,16842753,1 or" in decision.reason


def test_certificate_decision_never_signs_twice_for_one_csr() -> None:
    """Whatever the device lists, a CSR with a journaled certificate is never signed again."""
    for state in ("issued", "confirmed"):
        for device in (None, MINE, OTHER, THEIRS):
            decision = decide_certificate(sec_tag=TAG, device_sha=device, journal=known(state),
                                          csr_sha256=CSR, device_cert_matches_key=None,
                                          if_exists="replace")
            assert decision.action is not CertAction.SIGN


def test_certificate_decision_refuses_missing_input() -> None:
    with pytest.raises(ValueError, match="needs to know"):
        decide_certificate(sec_tag=TAG, device_sha=THEIRS, journal=None, csr_sha256=CSR,
                           device_cert_matches_key=None, if_exists="keep")
    with pytest.raises(ValueError, match="if_exists"):
        decide_certificate(sec_tag=TAG, device_sha=None, journal=None, csr_sha256=CSR,
                           device_cert_matches_key=None, if_exists="maybe")


CHAIN = "D" * 64


def chain_known(state: str, sha: str = CHAIN) -> CertState:
    return CertState(imei="352656100367872", sec_tag=16842753, type=0, state=state,
                     pem="...", sha256=sha)


CHAINS: list[tuple[str, str | None, CertState | None, str, CertAction, CertOutcome]] = [
    ("on the device", CHAIN, chain_known("confirmed"), "keep", CertAction.NOTHING,
     CertOutcome.UNCHANGED),
    ("on the device, never journaled", CHAIN, None, "fail", CertAction.NOTHING,
     CertOutcome.UNCHANGED),
    ("written, its answer lost", CHAIN, chain_known("issued"), "keep", CertAction.NOTHING,
     CertOutcome.WRITTEN),
    ("absent", None, None, "keep", CertAction.WRITE, CertOutcome.WRITTEN),
    ("journaled, crash before the write", None, chain_known("issued"), "keep", CertAction.WRITE,
     CertOutcome.WRITTEN),
    ("confirmed, since deleted", None, chain_known("confirmed"), "keep", CertAction.WRITE,
     CertOutcome.REWRITTEN),
    ("plan's chain changed", OTHER, chain_known("confirmed", sha=OTHER), "keep",
     CertAction.WRITE, CertOutcome.REWRITTEN),
    ("foreign, keep", THEIRS, None, "keep", CertAction.KEEP, CertOutcome.PRE_EXISTING),
    ("foreign, replace", THEIRS, None, "replace", CertAction.WRITE, CertOutcome.WRITTEN),
    ("foreign, fail", THEIRS, None, "fail", CertAction.FAIL, CertOutcome.FAILED),
    ("kept before", THEIRS, chain_known("pre-existing", sha=THEIRS), "keep", CertAction.KEEP,
     CertOutcome.PRE_EXISTING),
]


@pytest.mark.parametrize(("case", "device", "journal", "if_exists", "action", "outcome"),
                         CHAINS, ids=[row[0] for row in CHAINS])
def test_chain_decision(case: str, device: str | None, journal: CertState | None,
                        if_exists: str, action: CertAction, outcome: CertOutcome) -> None:
    decision = decide_chain(sec_tag=TAG, device_sha=device, journal=journal, chain_sha256=CHAIN,
                            if_exists=if_exists)
    assert (decision.action, decision.outcome) == (action, outcome), decision.reason
    if action is CertAction.FAIL:
        assert "delete it with AT%CMNG=3,16842753,0 or" in decision.reason


def test_outcome_words_are_the_manifest_words() -> None:
    words = {o.value for o in CertOutcome}
    assert words == {"issued", "written", "unchanged", "rewritten", "pre-existing", "failed",
                     "interrupted"}
