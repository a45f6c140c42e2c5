"""``keys.<name>.ca``: check the section and load what it names into a certificate authority.

How this works: the section is constructed as the strict :class:`CaSection` shape, then the
rules between its fields (a local CA has ``cert`` and ``key``, a command CA has
``command``; ``validity_days`` and ``key_passphrase_env`` only for the first, ``timeout_s`` and
``issuer`` only for the second), then every file is read and checked now (the CA certificate is a
CA and the key is its key, the chain parses and fits one ``%CMNG`` write, the program exists), so
that a run never discovers a broken CA after it has made keys. Each problem is reported at the
line of the field it concerns (which keys may have a CA, and with which key usage, is the key
spec's rule: :class:`~fleet.plan.model.KeySpec`). Paths are relative to the plan's directory; a
command is an argv list or a string split with :func:`shlex.split` (never a shell), and runs in
the plan's directory. A ``chain:`` may instead name one of the bundled nRF Cloud chains
(:mod:`fleet.certs.bundled`).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from pydantic.dataclasses import dataclass

from fleet.at import Command, Multiline
from fleet.certs.authority import CaPrivateKey, Chain, CommandCa, ExternalCaKey, LocalCa
from fleet.certs.bundled import BUNDLED_CHAINS, bundled_chain
from fleet.certs.load import load_ca_certificate, load_ca_key, load_certificate, load_chain
from fleet.errors import ArgumentError, CertificateError, TokenError
from fleet.hsm.uri import Pkcs11Uri, is_pkcs11_uri, parse_pkcs11_uri
from fleet.plan.context import Context
from fleet.plan.fields import MAX_SEC_TAG, EnvName, PathText, Seconds
from fleet.plan.model import STRICT
from fleet.plan.schema import check
from fleet.plan.source import Path_

__all__ = ["CaSection", "build_ca"]

_LOCAL_ONLY = ("cert", "key", "validity_days", "key_passphrase_env")
_COMMAND_ONLY = ("command", "timeout_s", "issuer")


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class CaSection:
    """``keys.<name>.ca``: a local CA (``cert``, ``key``) or an external ``command``; which
    fields go with which form is checked by :func:`build_ca` (from the fields written)."""

    cert: PathText | None = None
    key: PathText | None = None
    validity_days: Annotated[int, Field(ge=1, le=36500)] = 365
    key_passphrase_env: EnvName | None = None
    command: Any = None  #: a list of strings or one string: checked by build_ca
    timeout_s: Seconds = 30.0
    issuer: PathText | None = None
    chain: PathText | None = None


def build_ca(ctx: Context, where: Path_, raw: Any) -> LocalCa | CommandCa | None:
    """The CA from the raw ``ca`` mapping at ``where`` (``("keys", name, "ca")``), or None
    after reporting every problem."""
    doc = check(CaSection, raw, where, ctx.src, ctx.report)
    if doc is None:
        return None
    ok = True
    given = set(raw)
    local = "cert" in given or "key" in given
    if local and "command" in given:
        ctx.at(where, "give either a local CA (cert and key) or a command, not both", key=True)
        return None
    if not local and "command" not in given:
        ctx.at(where, "needs either cert and key (a local CA) or command (an external CA "
                      "program)", key=True)
        return None
    for name in _COMMAND_ONLY if local else _LOCAL_ONLY:
        if name in given:
            form = "a local CA (cert, key)" if local else "a command CA"
            ctx.at((*where, name), f"{name} does not apply to {form}", key=True)
            ok = False
    chain = None
    if doc.chain is not None:
        chain = _chain(ctx, where, doc.chain)
        ok = ok and chain is not None
    if local:
        return _local(ctx, where, doc, chain) if ok else None
    command = _command(ctx, where, doc)
    issuer = None
    if doc.issuer is not None:
        try:
            issuer = load_certificate(ctx.path(doc.issuer), "issuer certificate")
        except CertificateError as exc:
            ctx.at((*where, "issuer"), str(exc))
            ok = False
    if not ok or command is None:
        return None
    return CommandCa(argv=command, timeout_s=doc.timeout_s, cwd=ctx.base, issuer=issuer,
                     chain=chain)


def _chain(ctx: Context, where: Path_, text: str) -> Chain | None:
    """The ``chain:``: a bundled chain's name (:mod:`fleet.certs.bundled`), or a file."""
    path = ctx.path(text)
    if text in BUNDLED_CHAINS:
        if path.exists():
            ctx.at((*where, "chain"), f"{text!r} is both a bundled chain and the file {path}: "
                   f"write ./{text} for the file")
            return None
        return bundled_chain(text)
    try:
        chain = load_chain(path)
    except CertificateError as exc:
        ctx.at((*where, "chain"), str(exc))
        return None
    try:
        Command.set("%CMNG", 0, MAX_SEC_TAG, 0, Multiline(chain.pem))
    except ArgumentError as exc:
        ctx.at((*where, "chain"), f"chain {path} cannot be written in one AT%CMNG command "
               f"({exc})")
        return None
    return chain


def _local(ctx: Context, where: Path_, doc: CaSection, chain: Chain | None) -> LocalCa | None:
    for name in ("cert", "key"):
        if getattr(doc, name) is None:
            ctx.at(where, f"a local CA needs {name} (a PEM file)", key=True)
            return None
    assert doc.cert is not None and doc.key is not None
    cert_path = ctx.path(doc.cert)
    key_path: Path | Pkcs11Uri
    if is_pkcs11_uri(doc.key):
        if doc.key_passphrase_env is not None:
            ctx.at((*where, "key_passphrase_env"), "key_passphrase_env does not apply to a key "
                   "in a PKCS#11 token (its PIN is read from the URI's pin-source)", key=True)
            return None
        try:
            key_path = parse_pkcs11_uri(doc.key)
        except TokenError as exc:
            ctx.at((*where, "key"), f"CA key: {exc}")
            return None
    else:
        key_path = ctx.path(doc.key)
    try:
        certificate = load_ca_certificate(cert_path)
    except CertificateError as exc:
        ctx.at((*where, "cert"), str(exc))
        return None
    try:
        if isinstance(key_path, Pkcs11Uri):
            from fleet.hsm.signers import open_ca_key  # the PKCS#11 binding: only now

            private_key: CaPrivateKey | ExternalCaKey = open_ca_key(key_path, certificate)
        else:
            private_key = load_ca_key(key_path, certificate,
                                      passphrase_env=doc.key_passphrase_env)
    except CertificateError as exc:
        ctx.at((*where, "key"), str(exc))
        return None
    return LocalCa(cert_path=cert_path, key_path=key_path, certificate=certificate,
                   private_key=private_key, validity_days=doc.validity_days,
                   key_passphrase_env=doc.key_passphrase_env, chain=chain)


def _command(ctx: Context, where: Path_, doc: CaSection) -> tuple[str, ...] | None:
    field: Path_ = (*where, "command")
    raw = doc.command
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            ctx.at(field, f"command cannot be split into arguments: {exc}")
            return None
    elif isinstance(raw, list) and all(isinstance(arg, str) for arg in raw):
        argv = list(raw)
    else:
        ctx.at(field, "command must be a list of strings or one string (split like a shell "
                      "would, but never run by one)")
        return None
    if not argv or not argv[0]:
        ctx.at(field, "command is empty")
        return None
    if any("\x00" in arg for arg in argv):
        ctx.at(field, "command contains a NUL character")
        return None
    program = argv[0]
    if "/" in program:
        resolved = ctx.path(program)
        if not resolved.is_file() or not os.access(resolved, os.X_OK):
            ctx.at(field, f"program {resolved} does not exist or is not executable")
            return None
        argv[0] = str(resolved)
    elif shutil.which(program) is None:
        ctx.at(field, f"program {program!r} is not found on PATH")
        return None
    return tuple(argv)
