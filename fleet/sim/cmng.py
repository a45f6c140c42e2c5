"""``AT%CMNG``: write (0), list (1), read (2) and delete (3) credentials.

- ``%CMNG=0,<tag>,<type>,"<content>"[,"<passphrase>"]`` stores the content byte for byte (the
  listed SHA-256 is over exactly those bytes). Writable types: 0 root CA, 1 client certificate,
  2 client private key (PEM), 3 PSK, 4 PSK identity, 5 public key. Types 6-11 are the modem's own
  (device identity key, endorsement key, Nordic keys...): ``514``. Other types: ``ERROR``.
  Writing over an existing (tag, type) replaces it (no extra room needed). Errors in order:
  syntax ``ERROR``, active ``518``, reserved tag (> 2147483647) ``514``, type 6-11 ``514``,
  client certificate hook (:meth:`Modem.check_client_certificate`), store full ``515``. A PEM
  with CRLF line ends is stored as it is on every model (Nordic's installer writes them so;
  the one report of a 527 for one is not modelled), and lists the SHA of those bytes.
- ``%CMNG=1[,<tag>[,<type>]]`` lists ``%CMNG: <tag>,<type>,"<SHA-256 upper hex>"`` sorted by
  (tag, type), with the modem's reserved entries when they match the filter. Any mode. The
  list-no-sha fault leaves the SHA column out; list-drop answers nothing (the port drops), and so
  does swap (and swap-unattested), at a listing of everything (the server puts another board
  in the modem's place).
- ``%CMNG=2,<tag>,<type>`` reads a certificate (types 0 and 1 only, else ``514``; reserved tag
  ``514``; missing ``513``): ``%CMNG: <tag>,<type>,"<sha>","<content>"``, the content spanning
  lines. Any mode.
- ``%CMNG=3,<tag>,<type>`` deletes: active ``518``, reserved tag ``514``, missing ``513``.
"""

from __future__ import annotations

from fleet.at import Ok, ParsedCommand
from fleet.errors import CmeCode
from fleet.faults import FaultName
from fleet.nrf91 import MAX_MODEM_SEC_TAG, MAX_USER_SEC_TAG, CredentialType
from fleet.sim.reply import Faults, ModemView, Reply, error, ok
from fleet.sim.store import Credential, StoreFull

__all__ = ["WRITABLE_TYPES", "handle_cmng"]

#: Credential types ``%CMNG=0`` accepts.
WRITABLE_TYPES = frozenset(t for t in CredentialType if t <= CredentialType.PUBLIC_KEY)
#: Types that exist but belong to the modem: writing them is ``514``.
_MODEM_TYPES = frozenset(CredentialType) - WRITABLE_TYPES
_READABLE_TYPES = frozenset({CredentialType.ROOT_CA_CERT, CredentialType.CLIENT_CERT})


def _tag_type(cmd: ParsedCommand) -> tuple[int, int] | None:
    tag, type_ = cmd.arg(1), cmd.arg(2)
    if not isinstance(tag, int) or not isinstance(type_, int):
        return None
    if tag > MAX_MODEM_SEC_TAG or type_ > 255:
        return None
    return tag, type_


def handle_cmng(modem: ModemView, cmd: ParsedCommand, faults: Faults) -> Reply:
    """Answer one ``AT%CMNG=...`` command."""
    opcode = cmd.arg(0)
    if opcode == 0:
        return _write(modem, cmd)
    if opcode == 1:
        return _list(modem, cmd, faults)
    if opcode == 2:
        return _read(modem, cmd)
    if opcode == 3:
        return _delete(modem, cmd)
    return error()


def _write(modem: ModemView, cmd: ParsedCommand) -> Reply:
    pair = _tag_type(cmd)
    content = cmd.arg(3)
    if pair is None or not 4 <= len(cmd.args) <= 5 or not isinstance(content, str) or not content:
        return error()
    if len(cmd.args) == 5 and not isinstance(cmd.args[4], str):
        return error()
    tag, type_ = pair
    if type_ not in WRITABLE_TYPES | _MODEM_TYPES:
        return error()
    if modem.active:
        return modem.cme(CmeCode.ACTIVE_STATE)
    if tag > MAX_USER_SEC_TAG or type_ in _MODEM_TYPES:
        return modem.cme(CmeCode.NOT_ALLOWED)
    data = content.encode("utf-8")
    if type_ == CredentialType.CLIENT_CERT:
        refusal = modem.check_client_certificate(tag, data)
        if refusal is not None:
            return modem.cme(refusal)
    try:
        modem.store.put(Credential.written(tag, type_, data))
    except StoreFull:
        return modem.cme(CmeCode.MEMORY_FULL)
    modem.touch()
    return ok(changed=True)


def _list(modem: ModemView, cmd: ParsedCommand, faults: Faults) -> Reply:
    if len(cmd.args) > 3:
        return error()
    tag, type_ = cmd.arg(1), cmd.arg(2)
    if tag is not None and (not isinstance(tag, int) or tag > MAX_MODEM_SEC_TAG):
        return error()
    if type_ is not None and (not isinstance(type_, int) or tag is None):
        return error()
    rows = [(c.sec_tag, c.type, c.sha256) for c in modem.store.entries(tag, type_)]
    rows += [row for row in modem.reserved_entries()
             if (tag is None or row[0] == tag) and (type_ is None or row[1] == type_)]
    if faults(FaultName.LIST_DROP):
        return Reply(final=Ok(), drop=True, fault=FaultName.LIST_DROP)
    for swap in (FaultName.SWAP, FaultName.SWAP_UNATTESTED):
        if tag is None and faults(swap):
            return Reply(final=Ok(), drop=True, fault=swap)
    if faults(FaultName.LIST_NO_SHA):
        return ok(*(f"%CMNG: {t},{k}" for t, k, _ in sorted(rows)), fault=FaultName.LIST_NO_SHA)
    return ok(*(f'%CMNG: {t},{k},"{sha}"' for t, k, sha in sorted(rows)))


def _read(modem: ModemView, cmd: ParsedCommand) -> Reply:
    pair = _tag_type(cmd)
    if pair is None or len(cmd.args) != 3:
        return error()
    tag, type_ = pair
    if tag > MAX_USER_SEC_TAG or type_ not in _READABLE_TYPES:
        return modem.cme(CmeCode.NOT_ALLOWED)
    credential = modem.store.get(tag, type_)
    if credential is None or credential.content is None:
        return modem.cme(CmeCode.NOT_FOUND)
    text = credential.content.decode("utf-8", errors="replace")
    return ok(f'%CMNG: {tag},{type_},"{credential.sha256}","{text}"')


def _delete(modem: ModemView, cmd: ParsedCommand) -> Reply:
    pair = _tag_type(cmd)
    if pair is None or len(cmd.args) != 3:
        return error()
    tag, type_ = pair
    if modem.active:
        return modem.cme(CmeCode.ACTIVE_STATE)
    if tag > MAX_USER_SEC_TAG:
        return modem.cme(CmeCode.NOT_ALLOWED)
    if not modem.store.delete(tag, type_):
        return modem.cme(CmeCode.NOT_FOUND)
    modem.touch()
    return ok(changed=True)
