"""Pure parsing and checking of the modem's credential answers (%KEYGEN, %CMNG, %ATTESTTOKEN).

No I/O. Every failure is a :class:`fleet.errors.CredentialError` naming what is wrong.
"""

from fleet.credentials.attest import (
    ATTEST_MESSAGE_TYPE,
    AttestToken,
    attest_token_problem,
    parse_attest_token,
)
from fleet.credentials.attributes import (
    KEYGEN_ATTRIBUTES,
    SubjectPairs,
    attributes_subject,
    default_subject,
    validate_attribute_value,
)
from fleet.credentials.cmng import (
    CmngEntry,
    CredentialType,
    parse_cmng_list,
    parse_cmng_list_line,
    parse_cmng_read,
)
from fleet.credentials.cose import (
    PAYLOAD_ID_CSR,
    PAYLOAD_ID_PUBLIC_KEY,
    CoseSign1,
    KeygenPayload,
    decode_cose_sign1,
    decode_keygen_payload,
    decode_sec_tag,
    encode_keygen_payload,
    encode_sec_tag,
    sign_cose_sign1,
)
from fleet.credentials.der import add_sigalg_null, strip_sigalg_null
from fleet.credentials.keygen import (
    KEY_USAGE_NAMES,
    Check,
    Expectation,
    KeygenAnswer,
    b64url_decode,
    b64url_encode,
    check_keygen,
    decode_keygen,
    extract_keygen_value,
    parse_keygen,
    verify_keygen,
)
from fleet.credentials.modem import (
    DEFAULT_KEY_USAGE,
    build_csr,
    build_keygen_answer,
    key_usage_extension,
    public_key_der,
)

__all__ = [
    "ATTEST_MESSAGE_TYPE",
    "DEFAULT_KEY_USAGE",
    "KEYGEN_ATTRIBUTES",
    "KEY_USAGE_NAMES",
    "PAYLOAD_ID_CSR",
    "PAYLOAD_ID_PUBLIC_KEY",
    "AttestToken",
    "Check",
    "CmngEntry",
    "CoseSign1",
    "CredentialType",
    "Expectation",
    "KeygenAnswer",
    "KeygenPayload",
    "SubjectPairs",
    "add_sigalg_null",
    "attest_token_problem",
    "attributes_subject",
    "b64url_decode",
    "b64url_encode",
    "build_csr",
    "build_keygen_answer",
    "check_keygen",
    "decode_cose_sign1",
    "decode_keygen",
    "decode_keygen_payload",
    "decode_sec_tag",
    "default_subject",
    "encode_keygen_payload",
    "encode_sec_tag",
    "extract_keygen_value",
    "key_usage_extension",
    "parse_attest_token",
    "parse_cmng_list",
    "parse_cmng_list_line",
    "parse_cmng_read",
    "parse_keygen",
    "public_key_der",
    "sign_cose_sign1",
    "strip_sigalg_null",
    "validate_attribute_value",
    "verify_keygen",
]
