"""The ``<attributes>`` string of ``%KEYGEN`` and the CSR subject it produces.

The modem takes ``"ID1=value1,ID2=value2"`` where each ID is one of the documented attribute
names (long or short form, see reference/at-keygen.txt) and builds the CSR subject from them, in
that order. Without attributes the subject is ``CN=<device UUID>``.

Subjects are compared as ``(OID, value)`` pairs, not as strings, because RFC 4514 rendering has
no short name for most of these attributes.
"""

from __future__ import annotations

import unicodedata
import uuid

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "KEYGEN_ATTRIBUTES",
    "SubjectPairs",
    "attributes_subject",
    "default_subject",
    "format_attributes",
    "parse_attributes",
    "subject_pairs",
    "validate_attribute_value",
]

SubjectPairs = tuple[tuple[str, str], ...]

_ATTRS: tuple[tuple[str, str | None, x509.ObjectIdentifier], ...] = (
    ("commonName", "CN", NameOID.COMMON_NAME),
    ("locality", "L", NameOID.LOCALITY_NAME),
    ("stateOrProvinceName", "ST", NameOID.STATE_OR_PROVINCE_NAME),
    ("organizationName", "O", NameOID.ORGANIZATION_NAME),
    ("organizationalUnitName", "OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("countryName", "C", NameOID.COUNTRY_NAME),
    ("domainComponent", "DC", NameOID.DOMAIN_COMPONENT),
    ("surName", "SN", NameOID.SURNAME),
    ("givenName", "GN", NameOID.GIVEN_NAME),
    ("emailAddress", "R", NameOID.EMAIL_ADDRESS),
    ("serialNumber", None, NameOID.SERIAL_NUMBER),
    ("postalAddress", None, NameOID.POSTAL_ADDRESS),
    ("postalCode", None, NameOID.POSTAL_CODE),
    ("dnQualifier", None, NameOID.DN_QUALIFIER),
    ("title", None, NameOID.TITLE),
    ("initials", None, NameOID.INITIALS),
    ("pseudonym", None, NameOID.PSEUDONYM),
    ("generationQualifier", None, NameOID.GENERATION_QUALIFIER),
)

#: Every attribute ID the modem documents (long and short forms) -> its OID.
KEYGEN_ATTRIBUTES: dict[str, x509.ObjectIdentifier] = {}
for _long, _short, _oid in _ATTRS:
    KEYGEN_ATTRIBUTES[_long] = _oid
    if _short:
        KEYGEN_ATTRIBUTES[_short] = _oid


def validate_attribute_value(name: str, value: str) -> str | None:
    """Why ``value`` cannot be sent for attribute ``name``, or ``None`` when it can.

    A comma would start another attribute, a double quote would end the AT string argument and a
    control character would end the command line.
    """
    if name not in KEYGEN_ATTRIBUTES:
        return (f"attribute {name!r} is not one the modem supports "
                f"(supported: {', '.join(sorted(KEYGEN_ATTRIBUTES))})")
    if value == "":
        return f"attribute {name} has an empty value"
    for char in value:
        if char == '"':
            return f"attribute {name} value contains a double quote: {value!r}"
        if char == ",":
            return (f"attribute {name} value contains a comma "
                    f"(the modem splits attributes on commas): {value!r}")
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"attribute {name} value contains control character {char!r}: {value!r}"
    if value != value.strip():
        return f"attribute {name} value has leading or trailing spaces: {value!r}"
    if KEYGEN_ATTRIBUTES[name] == NameOID.COUNTRY_NAME and len(value) != 2:
        return f"countryName must be a 2-letter code, not {value!r}"
    return None


def format_attributes(pairs: list[tuple[str, str]]) -> str:
    """The ``<attributes>`` string for ``[(name, value), ...]`` (validated)."""
    for name, value in pairs:
        problem = validate_attribute_value(name, value)
        if problem:
            raise ValueError(problem)
    return ",".join(f"{name}={value}" for name, value in pairs)


def parse_attributes(text: str) -> list[tuple[x509.ObjectIdentifier, str]]:
    """Parse an ``<attributes>`` string the way the modem does; raises ValueError."""
    out: list[tuple[x509.ObjectIdentifier, str]] = []
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in KEYGEN_ATTRIBUTES or value == "":
            raise ValueError(f"invalid attribute {item!r}")
        out.append((KEYGEN_ATTRIBUTES[name], value))
    return out


def subject_pairs(name: x509.Name) -> SubjectPairs:
    """A subject as ``((dotted OID, value), ...)`` in encoding order."""
    return tuple(
        (attr.oid.dotted_string, str(attr.value)) for rdn in name.rdns for attr in rdn
    )


def default_subject(device_uuid: uuid.UUID) -> SubjectPairs:
    """The subject the modem uses when ``<attributes>`` is omitted: ``CN=<device UUID>``."""
    return ((NameOID.COMMON_NAME.dotted_string, str(device_uuid)),)


def attributes_subject(text: str) -> SubjectPairs:
    """The subject an ``<attributes>`` string produces."""
    return tuple((oid.dotted_string, value) for oid, value in parse_attributes(text))
