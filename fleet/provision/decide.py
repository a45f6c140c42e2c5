"""What to do with one key, as a pure function of (plan, journal, what the device reported).

How this works
--------------
The flow inspects the device (``AT%CMNG=1,<tag>,<type>``: is a key there?) and reads the
journal's :class:`fleet.state.KeyState` for (IMEI, sec_tag, type), then asks these functions
for a :class:`Decision`. Nothing here does I/O, so every rule of DESIGN.md "Idempotency and
resume" has a table test.

Client key (type 2):

=========  ====================================================  ===========  ============
present    journal                                               action       outcome
=========  ====================================================  ===========  ============
yes        disputed (another board answered under this IMEI),    FAIL         failed
           unless the listing's SHA-256 is the one recorded
           for the captured answer                               (NOTHING)    (unchanged)
yes        answer captured                                       NOTHING      unchanged
yes        answer captured, but the listing's SHA-256 is not     FAIL         failed
           the one recorded for it (another key is there)
yes        unresolved %KEYGEN intent, key absent before it       RECOVER      recovered
yes        anything else (the key predates fleet)                if_exists:   keep ->
                                                                 KEEP/         pre-existing,
                                                                 REPLACE/FAIL  generated,
                                                                               failed
no         anything                                              GENERATE     generated
=========  ====================================================  ===========  ============

Endorsement key (type 8): %KEYGEN returns the existing key when there is one, so it is always safe
to send. When the journal holds the captured answer and the device still lists the key (with the
SHA-256 recorded for it, when one was), nothing is sent; otherwise CAPTURE, and
:func:`endorsement_outcome` compares the answer with the journal.

``listed_sha`` is the SHA-256 column the device's ``%CMNG`` listing shows for the key (None: no
column, or no key). The journal records it the first time a captured key is listed; a later
listing that shows another one means the key there is not the one whose answer the journal
holds, so the answer is not reported for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet.at import delete_credential
from fleet.nrf91 import CredentialType
from fleet.records import KeyOutcome
from fleet.state import KeyState

__all__ = ["Action", "Decision", "decide_client_key", "decide_endorsement_key",
           "endorsement_outcome"]


class Action(enum.StrEnum):
    """What the flow does for a key."""

    NOTHING = "nothing"  #: the key is there and its answer is in the journal
    KEEP = "keep"  #: a pre-existing key is kept (no CSR)
    FAIL = "fail"  #: a pre-existing key and `if_exists: fail`
    GENERATE = "generate"  #: %KEYGEN
    RECOVER = "recover"  #: delete the unseen key of an interrupted %KEYGEN, then %KEYGEN
    REPLACE = "replace"  #: delete the pre-existing key (`if_exists: replace`), then %KEYGEN
    CAPTURE = "capture"  #: endorsement %KEYGEN (returns the existing key or makes one)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """An action, the outcome it leads to when it succeeds, and why."""

    action: Action
    outcome: KeyOutcome
    reason: str

    @property
    def deletes(self) -> bool:
        return self.action in (Action.RECOVER, Action.REPLACE)

    @property
    def changes_device(self) -> bool:
        """Whether carrying it out changes what the device holds (Ansible's `changed`)."""
        return self.outcome in (KeyOutcome.GENERATED, KeyOutcome.RECOVERED, KeyOutcome.CHANGED)


def _sha_changed(journal: KeyState, listed_sha: str | None) -> bool:
    """The device lists another SHA-256 for the key than the journal recorded for it (a listed
    SHA is always a whole one: :class:`fleet.credentials.CmngEntry` refuses any other)."""
    return bool(listed_sha and journal.cmng_sha and listed_sha != journal.cmng_sha)


def _dispute_settled(journal: KeyState, listed_sha: str | None) -> bool:
    """For a key the device lists while the journal's state of it is disputed (another board
    answered a %KEYGEN under this IMEI): whether the listing's SHA-256 is the one recorded for
    the captured answer, so that the key there is that key."""
    return bool(journal.state == "captured" and journal.answer and journal.cmng_sha
                and listed_sha == journal.cmng_sha)


def decide_client_key(*, sec_tag: int, present: bool, journal: KeyState, if_exists: str,
                      listed_sha: str | None = None) -> Decision:
    """The decision for the client private key (%KEYGEN key_type 2) of ``sec_tag``."""
    delete = delete_credential(sec_tag, CredentialType.CLIENT_PRIVATE_KEY)
    if present and journal.disputed is not None:
        if _dispute_settled(journal, listed_sha):
            return Decision(action=Action.NOTHING, outcome=KeyOutcome.UNCHANGED,
                            reason="key present, with the SHA-256 recorded for its captured "
                            "answer")
        return Decision(
            action=Action.FAIL, outcome=KeyOutcome.FAILED,
            reason=f"fleet cannot tell whether the key in this sec_tag is the one it holds the "
            f"answer of ({journal.disputed}); nothing was sent. If this is the board the "
            "journal knows and its key must stay, restore the journal from a backup; else "
            f"delete the key with {delete} and the next run makes a new one",
        )
    if present:
        # An unresolved %KEYGEN for a key that was absent comes first: the key there now may be
        # the one it made, whatever answer the journal captured for an earlier key.
        if journal.pending is not None and not journal.pending.present_before:
            return Decision(
                action=Action.RECOVER, outcome=KeyOutcome.RECOVERED,
                reason=f"an earlier %KEYGEN (step {journal.pending.step_id}) made this key but "
                "its answer was never captured, so nobody can hold its CSR: delete and generate",
            )
        if journal.state == "captured" and journal.answer and _sha_changed(journal, listed_sha):
            # Its CSR cannot be read back: the record must not show the captured one for it,
            # and a key that may be the captured one is never deleted on this evidence alone.
            return Decision(
                action=Action.FAIL, outcome=KeyOutcome.FAILED,
                reason=f"the key in this sec_tag is not the one fleet made: the modem lists its "
                f"SHA-256 as {listed_sha}, the journal recorded {journal.cmng_sha} for the key "
                "whose CSR it holds (replaced with another tool?); nothing was sent. Delete it "
                f"with {delete} to have the next run generate a new one",
            )
        if journal.state == "captured" and journal.answer:
            return Decision(action=Action.NOTHING, outcome=KeyOutcome.UNCHANGED,
                            reason="key present and its answer is in the journal")
        if if_exists == "keep":
            return Decision(action=Action.KEEP, outcome=KeyOutcome.PRE_EXISTING,
                            reason="a key fleet did not make is present; if_exists: keep")
        if if_exists == "replace":
            return Decision(action=Action.REPLACE, outcome=KeyOutcome.GENERATED,
                            reason="a key fleet did not make is present; if_exists: replace")
        if if_exists == "fail":
            return Decision(
                action=Action.FAIL, outcome=KeyOutcome.FAILED,
                reason="a key fleet did not make is already in this sec_tag (if_exists: fail); "
                f"delete it with {delete} or set if_exists: keep/replace",
            )
        raise ValueError(f"invalid if_exists {if_exists!r}")
    if journal.state == "captured":
        return Decision(action=Action.GENERATE, outcome=KeyOutcome.GENERATED,
                        reason="the key captured earlier is no longer on the device")
    return Decision(action=Action.GENERATE, outcome=KeyOutcome.GENERATED,
                    reason="no key in this sec_tag")


def decide_endorsement_key(*, present: bool, journal: KeyState,
                           listed_sha: str | None = None) -> Decision:
    """The decision for an endorsement key (%KEYGEN key_type 8)."""
    if present and journal.disputed is not None and not _dispute_settled(journal, listed_sha):
        # its %KEYGEN only reads the key
        return Decision(action=Action.CAPTURE, outcome=KeyOutcome.CHANGED,
                        reason="another board answered a %KEYGEN for this key under this IMEI: "
                        "capture it again and compare")
    if present and journal.pending is not None and not journal.pending.present_before:
        return Decision(action=Action.CAPTURE, outcome=KeyOutcome.GENERATED,
                        reason=f"an earlier %KEYGEN (step {journal.pending.step_id}) made "
                        "this key but its answer was never captured: capture it now")
    if present and journal.state == "captured" and journal.answer:
        if _sha_changed(journal, listed_sha):
            return Decision(action=Action.CAPTURE, outcome=KeyOutcome.CHANGED,
                            reason="the modem lists another SHA-256 for the key than the "
                            "journal recorded: capture it again and compare")
        return Decision(action=Action.NOTHING, outcome=KeyOutcome.UNCHANGED,
                        reason="key present and its answer is in the journal")
    if present and journal.state != "captured":
        return Decision(action=Action.CAPTURE, outcome=KeyOutcome.PRE_EXISTING,
                        reason="an endorsement key is present: capture its public key")
    if journal.state == "captured":
        return Decision(action=Action.CAPTURE, outcome=KeyOutcome.CHANGED,
                        reason="the endorsement key in the journal is no longer on the device")
    return Decision(action=Action.CAPTURE, outcome=KeyOutcome.GENERATED,
                    reason="no endorsement key in this sec_tag")


def endorsement_outcome(*, decision: Decision, journal_public_key: str | None,
                        new_public_key: str) -> KeyOutcome:
    """The outcome of an endorsement %KEYGEN, from the decision and the public keys before
    and now: the same key as the journal's is unchanged, another one changed."""
    if journal_public_key is not None:
        same = journal_public_key == new_public_key
        return KeyOutcome.UNCHANGED if same else KeyOutcome.CHANGED
    return decision.outcome
