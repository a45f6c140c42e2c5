"""``keys.<name>.ca``: check the section and load what it names into a certificate authority.

How this works: the section is validated against the strict :class:`~fleet.plan.schema.CaDoc`
shape, then the rules between its fields (a local CA has ``cert`` and ``key``, a command CA has
``command``; ``validity_days`` and ``key_passphrase_env`` only for the first, ``timeout_s`` and
``issuer`` only for the second), then every file is read and checked now (the CA certificate is a
CA and the key is its key, the chain parses and fits one ``%CMNG`` write, the program exists), so
that a run never discovers a broken CA after it has made keys. Each problem is reported at the
line of the field it concerns. Paths are relative to the plan's directory; a command is an argv
list or a string split with :func:`shlex.split` (never a shell), and runs in the plan's directory.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from fleet.at import Command, Multiline
from fleet.certs.authority import Chain, CommandCa, LocalCa
from fleet.certs.load import load_ca_certificate, load_ca_key, load_certificate, load_chain
from fleet.errors import ArgumentError, CertificateError
from fleet.plan.context import Context
from fleet.plan.model import MAX_SEC_TAG, ca_key_usage_problem
from fleet.plan.schema import CaDoc, check
from fleet.plan.source import Path_

__all__ = ["build_ca"]

_LOCAL_ONLY = ("cert", "key", "validity_days", "key_passphrase_env")
_COMMAND_ONLY = ("command", "timeout_s", "issuer")


def build_ca(ctx: Context, path: Path_, raw: Any, *, client_csr: bool,
             key_usage: str | None) -> LocalCa | CommandCa | None:
    """The CA of the key spec at ``path`` (``("keys", name)``) from its raw ``ca`` mapping, or
    None after reporting every problem."""
    where: Path_ = (*path, "ca")
    if not client_csr:
        ctx.at(where, "ca is only valid for a client_key with response: csr (a certificate is "
                      "issued for the key's CSR)", key=True)
        return None
    doc = check(CaDoc, raw, where, ctx.src, ctx.report)
    if doc is None:
        return None
    ok = True
    problem = ca_key_usage_problem(key_usage)
    if problem:
        ctx.at((*path, "key_usage"), problem)
        ok = False
    given = doc.fields_set
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
        chain = _chain(ctx, where, ctx.path(doc.chain))
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
    return CommandCa(argv=command, timeout_s=doc.timeout_s, cwd=ctx.base,
                     issuer_path=ctx.path(doc.issuer) if doc.issuer else None, issuer=issuer,
                     chain=chain)


def _chain(ctx: Context, where: Path_, path: Path) -> Chain | None:
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


def _local(ctx: Context, where: Path_, doc: CaDoc, chain: Chain | None) -> LocalCa | None:
    for name in ("cert", "key"):
        if getattr(doc, name) is None:
            ctx.at(where, f"a local CA needs {name} (a PEM file)", key=True)
            return None
    assert doc.cert is not None and doc.key is not None
    cert_path, key_path = ctx.path(doc.cert), ctx.path(doc.key)
    try:
        certificate = load_ca_certificate(cert_path)
    except CertificateError as exc:
        ctx.at((*where, "cert"), str(exc))
        return None
    try:
        private_key = load_ca_key(key_path, certificate, passphrase_env=doc.key_passphrase_env)
    except CertificateError as exc:
        ctx.at((*where, "key"), str(exc))
        return None
    return LocalCa(cert_path=cert_path, key_path=key_path, certificate=certificate,
                   private_key=private_key, validity_days=doc.validity_days,
                   key_passphrase_env=doc.key_passphrase_env, chain=chain)


def _command(ctx: Context, where: Path_, doc: CaDoc) -> tuple[str, ...] | None:
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
