"""The idempotency rules of DESIGN.md as table tests of the pure decision functions."""

from __future__ import annotations

import pytest

from fleet.credentials import parse_cmng_list_line
from fleet.errors import CredentialError
from fleet.provision.decide import (
    Action,
    decide_client_key,
    decide_endorsement_key,
    endorsement_outcome,
)
from fleet.records import KeyOutcome
from fleet.state import KeyState, PendingIntent

NONE = KeyState()
CAPTURED = KeyState(state="captured", answer="body.cose")
PENDING = KeyState(state="intent", pending=PendingIntent(step_id=7, present_before=False))
PENDING_PRESENT = KeyState(state="intent", pending=PendingIntent(step_id=7, present_before=True))
PRE = KeyState(state="pre-existing")
# A captured key vanished, a new %KEYGEN was sent and its answer lost.
CAPTURED_THEN_PENDING = KeyState(state="captured", answer="old.cose",
                                 pending=PendingIntent(step_id=9, present_before=False))
DELETED = KeyState(state="deleted")
TAG = 16842753
RECORDED = "A" * 64  #: the SHA-256 the journal recorded for the captured key
CAPTURED_SHA = KeyState(state="captured", answer="body.cose", cmng_sha=RECORDED)

CLIENT = [
    # present, journal, if_exists -> action, outcome
    (False, NONE, "keep", Action.GENERATE, KeyOutcome.GENERATED),
    (False, CAPTURED, "keep", Action.GENERATE, KeyOutcome.GENERATED),
    (False, PENDING, "fail", Action.GENERATE, KeyOutcome.GENERATED),
    (False, DELETED, "keep", Action.GENERATE, KeyOutcome.GENERATED),
    (True, CAPTURED, "keep", Action.NOTHING, KeyOutcome.UNCHANGED),
    (True, CAPTURED, "replace", Action.NOTHING, KeyOutcome.UNCHANGED),
    (True, CAPTURED, "fail", Action.NOTHING, KeyOutcome.UNCHANGED),
    (True, PENDING, "keep", Action.RECOVER, KeyOutcome.RECOVERED),
    (True, CAPTURED_THEN_PENDING, "keep", Action.RECOVER, KeyOutcome.RECOVERED),
    (True, PENDING, "fail", Action.RECOVER, KeyOutcome.RECOVERED),
    (True, PENDING_PRESENT, "keep", Action.KEEP, KeyOutcome.PRE_EXISTING),
    (True, NONE, "keep", Action.KEEP, KeyOutcome.PRE_EXISTING),
    (True, NONE, "replace", Action.REPLACE, KeyOutcome.GENERATED),
    (True, NONE, "fail", Action.FAIL, KeyOutcome.FAILED),
    (True, PRE, "keep", Action.KEEP, KeyOutcome.PRE_EXISTING),
    (True, PRE, "replace", Action.REPLACE, KeyOutcome.GENERATED),
    (True, DELETED, "fail", Action.FAIL, KeyOutcome.FAILED),
]


@pytest.mark.parametrize(("listed", "action", "outcome"), [
    (RECORDED, Action.NOTHING, KeyOutcome.UNCHANGED),
    (None, Action.NOTHING, KeyOutcome.UNCHANGED),  # a listing without the SHA column
    ("B" * 64, Action.FAIL, KeyOutcome.FAILED),
])
@pytest.mark.parametrize("if_exists", ["keep", "replace", "fail"])
def test_a_client_key_listed_with_another_sha_is_not_the_captured_one(
        listed: str | None, action: Action, outcome: KeyOutcome, if_exists: str) -> None:
    decision = decide_client_key(sec_tag=TAG, present=True, journal=CAPTURED_SHA,
                                 if_exists=if_exists, listed_sha=listed)
    assert (decision.action, decision.outcome) == (action, outcome)
    assert not decision.deletes
    if action is Action.FAIL:
        assert RECORDED in decision.reason and "AT%CMNG=3,16842753,2 " in decision.reason


def test_an_endorsement_key_listed_with_another_sha_is_captured_again() -> None:
    again = decide_endorsement_key(present=True, journal=CAPTURED_SHA, listed_sha="B" * 64)
    assert (again.action, again.outcome) == (Action.CAPTURE, KeyOutcome.CHANGED)
    same = decide_endorsement_key(present=True, journal=CAPTURED_SHA, listed_sha=RECORDED)
    assert same.action is Action.NOTHING


DISPUTED = "another board answered"


@pytest.mark.parametrize(("present", "journal", "listed", "action", "outcome"), [
    (True, KeyState(state="captured", answer="a.b", disputed=DISPUTED), None,
     Action.FAIL, KeyOutcome.FAILED),  # no SHA recorded: nothing tells the keys apart
    (True, KeyState(state="captured", answer="a.b", cmng_sha=RECORDED, disputed=DISPUTED),
     RECORDED, Action.NOTHING, KeyOutcome.UNCHANGED),
    (True, KeyState(state="captured", answer="a.b", cmng_sha=RECORDED, disputed=DISPUTED),
     "B" * 64, Action.FAIL, KeyOutcome.FAILED),
    (True, KeyState(state="intent", pending=PendingIntent(step_id=3, present_before=False),
                    disputed=DISPUTED), None, Action.FAIL, KeyOutcome.FAILED),  # never RECOVER
    (True, KeyState(state="intent", disputed=DISPUTED), None, Action.FAIL, KeyOutcome.FAILED),
    (False, KeyState(state="captured", answer="a.b", disputed=DISPUTED), None,
     Action.GENERATE, KeyOutcome.GENERATED),  # nothing on the device to lose
])
@pytest.mark.parametrize("if_exists", ["keep", "replace", "fail"])
def test_a_disputed_client_key_is_never_deleted_or_reported_unchecked(
        present: bool, journal: KeyState, listed: str | None, action: Action,
        outcome: KeyOutcome, if_exists: str) -> None:
    decision = decide_client_key(sec_tag=TAG, present=present, journal=journal, if_exists=if_exists,
                                 listed_sha=listed)
    assert (decision.action, decision.outcome) == (action, outcome)
    assert not decision.deletes
    if action is Action.FAIL:
        assert DISPUTED in decision.reason and "nothing was sent" in decision.reason


def test_a_disputed_endorsement_key_is_read_again() -> None:
    disputed = KeyState(state="captured", answer="a.b", cmng_sha=RECORDED, disputed=DISPUTED)
    again = decide_endorsement_key(present=True, journal=disputed, listed_sha=None)
    assert (again.action, again.outcome) == (Action.CAPTURE, KeyOutcome.CHANGED)
    same = decide_endorsement_key(present=True, journal=disputed, listed_sha=RECORDED)
    assert same.action is Action.NOTHING


def test_only_a_whole_sha256_is_ever_compared() -> None:
    # A listing line whose SHA column was cut short is refused where it is parsed (the step is
    # tried again), so the decision never takes it for the SHA of another key.
    with pytest.raises(CredentialError, match="not 64 hex digits"):
        parse_cmng_list_line(f'%CMNG: 16842753,2,"{RECORDED[:40]}"')
    assert parse_cmng_list_line(f'%CMNG: 16842753,2,"{RECORDED.lower()}"').sha256 == RECORDED


@pytest.mark.parametrize(("present", "journal", "if_exists", "action", "outcome"), CLIENT)
def test_client_key_rules(present: bool, journal: KeyState, if_exists: str, action: Action,
                          outcome: KeyOutcome) -> None:
    decision = decide_client_key(sec_tag=TAG, present=present, journal=journal, if_exists=if_exists)
    assert (decision.action, decision.outcome) == (action, outcome)
    assert decision.reason


def test_a_captured_key_is_never_deleted() -> None:
    for if_exists in ("keep", "replace", "fail"):
        decision = decide_client_key(sec_tag=TAG, present=True, journal=CAPTURED,
                                     if_exists=if_exists)
        assert decision.action is Action.NOTHING and not decision.deletes


def test_fail_reason_says_what_to_do() -> None:
    decision = decide_client_key(sec_tag=TAG, present=True, journal=NONE, if_exists="fail")
    assert "if_exists" in decision.reason
    assert "delete it with AT%CMNG=3,16842753,2 or" in decision.reason
    with pytest.raises(ValueError):
        decide_client_key(sec_tag=TAG, present=True, journal=NONE, if_exists="maybe")


ENDORSEMENT = [
    (True, CAPTURED, Action.NOTHING, KeyOutcome.UNCHANGED),
    (True, NONE, Action.CAPTURE, KeyOutcome.PRE_EXISTING),
    (False, CAPTURED, Action.CAPTURE, KeyOutcome.CHANGED),
    (False, NONE, Action.CAPTURE, KeyOutcome.GENERATED),
    (True, PENDING, Action.CAPTURE, KeyOutcome.GENERATED),
    (True, CAPTURED_THEN_PENDING, Action.CAPTURE, KeyOutcome.GENERATED),
    (True, PENDING_PRESENT, Action.CAPTURE, KeyOutcome.PRE_EXISTING),
]


@pytest.mark.parametrize(("present", "journal", "action", "outcome"), ENDORSEMENT)
def test_endorsement_rules(present: bool, journal: KeyState, action: Action,
                           outcome: KeyOutcome) -> None:
    decision = decide_endorsement_key(present=present, journal=journal)
    assert (decision.action, decision.outcome) == (action, outcome)


def test_endorsement_outcome_compares_keys() -> None:
    existing = decide_endorsement_key(present=True, journal=NONE)
    fresh = decide_endorsement_key(present=False, journal=NONE)
    assert endorsement_outcome(decision=existing, journal_public_key="A",
                               new_public_key="A") is KeyOutcome.UNCHANGED
    assert endorsement_outcome(decision=fresh, journal_public_key="A",
                               new_public_key="B") is KeyOutcome.CHANGED
    assert endorsement_outcome(decision=existing, journal_public_key=None,
                               new_public_key="B") is KeyOutcome.PRE_EXISTING
    assert endorsement_outcome(decision=fresh, journal_public_key=None,
                               new_public_key="B") is KeyOutcome.GENERATED


def test_changes_device() -> None:
    for present, changes in ((False, True), (True, False)):
        decision = decide_client_key(sec_tag=TAG, present=present, journal=NONE, if_exists="keep")
        assert decision.changes_device is changes
    assert not decide_endorsement_key(present=True, journal=NONE).changes_device
    assert decide_endorsement_key(present=False, journal=NONE).changes_device
