"""The signed JSON manifest of a run: build it, sign it, write it, verify it.

How this works (DESIGN.md, "Manifest"; python-tuf style): :func:`build_signed` turns the run's
records into the ``signed`` object (plain JSON, integers and strings only); :func:`sign` signs the
RFC 8785 canonical bytes of ``signed`` (``rfc8785.dumps``), never the file bytes, giving
``{"signed": ..., "signatures": [{"keyid", "alg", "sig"}]}``; :func:`write_manifest` writes it
atomically and never over an existing file; :func:`verify` recomputes the canonical bytes, checks
every signature and every embedded ``%KEYGEN`` answer, and reports each check.

    key = load_signing_key("keys/station.pem")
    signed = build_signed(run, station_public_key_pem=public_key_pem(key))
    path = write_manifest("out/line1-a-2025-01-01.json", sign(signed, key))
    report = verify(path.read_bytes(), trusted=[load_public_key("keys/station.pub.pem")])
"""

from fleet.manifest.build import (
    FORMAT,
    RESPONSE_PAYLOAD_IDS,
    answer_fields,
    build_signed,
    plain_json,
)
from fleet.manifest.signing import ALGORITHMS, add_signature, canonical_bytes, sign, signature
from fleet.manifest.store import (
    directory_problem,
    json_syntax_problem,
    load_document,
    name_problem,
    nesting_problem,
    read_manifest,
    write_manifest,
)
from fleet.manifest.verify import (
    NOT_TRUSTED_WARNING,
    VerifyCheck,
    VerifyReport,
    verify,
    verify_contents,
    verify_file,
)

__all__ = [
    "ALGORITHMS",
    "FORMAT",
    "NOT_TRUSTED_WARNING",
    "RESPONSE_PAYLOAD_IDS",
    "VerifyCheck",
    "VerifyReport",
    "add_signature",
    "answer_fields",
    "build_signed",
    "canonical_bytes",
    "directory_problem",
    "json_syntax_problem",
    "load_document",
    "name_problem",
    "nesting_problem",
    "plain_json",
    "read_manifest",
    "sign",
    "signature",
    "verify",
    "verify_contents",
    "verify_file",
    "write_manifest",
]
