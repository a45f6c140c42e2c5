"""Facts about the nRF91 modem that several layers share (reference/nrf91-facts.md).

One home for each: the function modes, the ``%CMNG`` credential types, the sec_tag ranges, the
IMEI check digit, the modem models fleet knows (and the simulator plays), the Nordic kits whose
USB serial number tells which of their serial ports is the AT port, and the timing profiles of
the simulator (the documented assumptions about how long a modem takes). Pure data and pure
functions, importable by the plan loader without pulling in the simulator.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "ACTIVE_MODES",
    "ATTESTTOKEN_MIN_FIRMWARE",
    "CMNG_SHA_MIN_FIRMWARE",
    "FUNCTION_MODES",
    "KEYGEN_MIN_FIRMWARE",
    "MAX_MODEM_SEC_TAG",
    "MAX_USER_SEC_TAG",
    "MODELS",
    "MODEL_NAMES",
    "NORDIC_KITS",
    "PROFILES",
    "PROFILE_NAMES",
    "CredentialType",
    "Kit",
    "ModelInfo",
    "Timing",
    "Work",
    "attestation_problem",
    "attestation_ruled_out",
    "firmware_too_old",
    "firmware_version",
    "identity_text_problem",
    "kit_of",
    "luhn_digit",
    "luhn_valid",
    "unknown_nordic_kit",
]

#: Function modes ``AT+CFUN`` documents: 0 off, 1 on, 2 RX only, 4 offline, 20/21 LTE off/on,
#: 30/31 GNSS off/on, 40/41 UICC off/on, 44 offline with UICC.
FUNCTION_MODES = (0, 1, 2, 4, 20, 21, 30, 31, 40, 41, 44)

#: Modes in which ``%CMNG`` writes and ``%KEYGEN`` are refused with ``+CME ERROR: 518``.
ACTIVE_MODES = frozenset({1, 2, 21})


class CredentialType(enum.IntEnum):
    """``%CMNG`` credential types (also ``%KEYGEN``'s ``<key_type>``: 2 and 8)."""

    ROOT_CA_CERT = 0
    CLIENT_CERT = 1
    CLIENT_PRIVATE_KEY = 2
    PSK = 3
    PSK_IDENTITY = 4
    PUBLIC_KEY = 5
    DEVICE_IDENTITY_PUBLIC_KEY = 6
    RESERVED = 7
    ENDORSEMENT_KEY = 8
    OWNERSHIP_KEY = 9
    NORDIC_IDENTITY_ROOT_CA = 10
    NORDIC_PUBLIC_KEY = 11


#: Largest user sec_tag (``%KEYGEN`` documents 1..2147483647); larger tags are the modem's own
#: and writing them is ``+CME ERROR: 514``.
MAX_USER_SEC_TAG = 2_147_483_647
#: Largest sec_tag there is (the modem's reserved Nordic entries sit just below it).
MAX_MODEM_SEC_TAG = 0xFFFF_FFFF


def luhn_digit(digits: str) -> str:
    """The Luhn check digit to append to ``digits`` (an IMEI's 15th digit)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # doubled: these sit at odd positions once the digit is appended
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """True when ``number`` is all digits and its last digit is its Luhn check digit."""
    return number.isdigit() and len(number) >= 2 and luhn_digit(number[:-1]) == number[-1]


def identity_text_problem(text: str) -> str | None:
    """Why a model or firmware string (``AT+CGMM``, ``AT+CGMR``) cannot be recorded, or None.

    An nRF91 prints printable text; a NUL, a control character or bytes that are not UTF-8 (the
    line decoder's U+FFFD) mean a garbled line or not an nRF91, and would end up in the journal
    and in the signed manifest."""
    for char in text:
        if char == "\ufffd":
            return "bytes that are not UTF-8"
        if unicodedata.category(char).startswith("C"):
            return f"the control character U+{ord(char):04X}"
    return None


#: The oldest modem firmware with ``%KEYGEN`` (nrfcloud-utils' ``MIN_REQD_MFW_VER``).
KEYGEN_MIN_FIRMWARE = (1, 3, 0)
#: The oldest modem firmware whose ``%CMNG=1`` listing has the SHA-256 column that the
#: certificate step confirms a written certificate by (``MIN_REQD_MFW_VER_FOR_VERIFY``).
CMNG_SHA_MIN_FIRMWARE = (1, 3, 2)
#: The oldest modem firmware that answers ``%ATTESTTOKEN`` (on nRF91x1 modems only: an nRF9160
#: has none, whatever its firmware).
ATTESTTOKEN_MIN_FIRMWARE = (2, 0, 0)

# The x.y.z of a modem firmware string, as nrfcloud-utils finds it (``parse_mfw_ver``): exactly
# one, between ``-``/``_`` or the ends (``mfw_nrf9160_1.3.0-FOTA-TEST``).
_VERSION = re.compile(r"(?:(?<=[-_])|(?<=^))([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?=[-_]|$)")


def firmware_version(firmware: str) -> tuple[int, int, int] | None:
    """``mfw_nrf91x1_2.0.2`` -> ``(2, 0, 2)``; None when the string has no single x.y.z."""
    found = _VERSION.findall(firmware.strip())
    if len(found) != 1:
        return None
    major, minor, patch = found[0]
    return int(major), int(minor), int(patch)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def firmware_too_old(firmware: str | None, minimum: tuple[int, int, int], what: str
                     ) -> str | None:
    """Why ``what`` cannot be done on a modem with ``firmware``, or None. A firmware string
    without a version this can read is not refused (nrfcloud-utils goes on too)."""
    version = firmware_version(firmware or "")
    if version is None or version >= minimum:
        return None
    return f"the modem firmware is {firmware}: {what} needs modem firmware >= {_dotted(minimum)}"


def attestation_ruled_out(model: str | None, firmware: str | None) -> bool:
    """Whether the model or a firmware version this can read rules ``%ATTESTTOKEN`` out (a
    firmware string without a readable version does not: such a modem is asked)."""
    problem = attestation_problem(model, firmware)
    return problem is not None and (firmware_version(firmware or "") is not None
                                    or (model or "").upper().startswith("NRF9160"))


def attestation_problem(model: str | None, firmware: str | None) -> str | None:
    """Why this modem cannot give an attestation token (``%ATTESTTOKEN``), or None."""
    if model is not None and model.upper().startswith("NRF9160"):
        return (f"this modem is an {model}: %ATTESTTOKEN needs an nRF91x1 modem (nRF9151, "
                f"nRF9161, nRF9131) with modem firmware >= {_dotted(ATTESTTOKEN_MIN_FIRMWARE)}")
    version = firmware_version(firmware or "")
    if version is None:
        return (f"the modem firmware {firmware!r} has no version this check can read: "
                f"%ATTESTTOKEN needs modem firmware >= {_dotted(ATTESTTOKEN_MIN_FIRMWARE)}")
    return firmware_too_old(firmware, ATTESTTOKEN_MIN_FIRMWARE, "%ATTESTTOKEN")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What ``AT+CGMM`` / ``AT+CGMR`` print for one model, and the firmware's quirks."""

    name: str
    cgmm: str
    firmware: str
    #: the device type in the %ATTESTTOKEN body (nrfcloud-utils' ``device_type_dict``:
    #: 1 nRF9160 SIAA, 4 nRF9161 LACA, 5 nRF9131 LACA, 6 nRF9151 LACA)
    device_type: int

    def __post_init__(self) -> None:
        if not self.name or not self.cgmm or not self.firmware:
            raise ValueError("model name, CGMM and firmware strings must not be empty")


#: The models fleet knows (``fleet sim --model``, a plan's ``simulator.model``). Both produce the
#: NULL-parameter CSR seen on real firmware.
MODELS: dict[str, ModelInfo] = {
    "nrf9160": ModelInfo(name="nrf9160", cgmm="nRF9160-SICA", firmware="mfw_nrf9160_1.3.5",
                         device_type=1),
    "nrf9151": ModelInfo(name="nrf9151", cgmm="nRF9151-LACA", firmware="mfw_nrf91x1_2.0.2",
                         device_type=6),
}
MODEL_NAMES = tuple(MODELS)


class Work(enum.Enum):
    """How much work a command took, for the timing profile."""

    QUICK = "quick"  #: any ordinary command
    CFUN_CHANGE = "cfun"  #: AT+CFUN=<m> that changed the function mode
    KEYGEN = "keygen"  #: a %KEYGEN answer (new key, or the existing endorsement key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How long each kind of work takes, and the output pacing (``None``: no pacing).

    Profiles (the realistic one follows nrf91-facts.md "Timing": assumptions until measured):

    =============  ======  ==========================================================
    work           fast    realistic
    =============  ======  ==========================================================
    %KEYGEN        0       1.5 s (a new key, and the existing endorsement key answer)
    CFUN change    0       0.2 s (``AT+CFUN=<m>`` that changes the mode)
    anything else  0       20-50 ms (uniform, seeded per modem)
    output         at once 115200 baud (11520 bytes/s), paced line by line (short lines joined)
    =============  ======  ==========================================================
    """

    keygen_s: float
    cfun_s: float
    quick_min_s: float
    quick_max_s: float
    bytes_per_s: float | None

    def __post_init__(self) -> None:
        if min(self.keygen_s, self.cfun_s, self.quick_min_s) < 0:
            raise ValueError("delays must be >= 0")
        if self.quick_max_s < self.quick_min_s:
            raise ValueError("quick_max_s must be >= quick_min_s")
        if self.bytes_per_s is not None and self.bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be > 0")

    def delay(self, work: Work, jitter: float) -> float:
        """Seconds the answer to ``work`` takes; ``jitter`` in [0, 1) picks within a range."""
        if work is Work.KEYGEN:
            return self.keygen_s
        if work is Work.CFUN_CHANGE:
            return self.cfun_s
        return self.quick_min_s + (self.quick_max_s - self.quick_min_s) * jitter


#: The timing profiles (``fleet sim --profile``, a plan's ``simulator.profile``).
PROFILES: dict[str, Timing] = {
    "fast": Timing(keygen_s=0.0, cfun_s=0.0, quick_min_s=0.0, quick_max_s=0.0, bytes_per_s=None),
    "realistic": Timing(keygen_s=1.5, cfun_s=0.2, quick_min_s=0.02, quick_max_s=0.05,
                        bytes_per_s=115200 / 10),
}
PROFILE_NAMES = tuple(PROFILES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Kit:
    """A Nordic board whose USB serial number (or product string) names it, and which of the
    serial ports under that one USB serial number, in interface order, carries the AT host or
    shell (``at_port``: 0 is the lowest-numbered interface)."""

    name: str
    at_port: int
    serial_prefixes: tuple[str, ...] = ()
    products: tuple[str, ...] = ()


#: The kits with an nRF91 (reference/device-interfaces.md, section 4; nrfcredstore's
#: ``usb_patterns``): a kit's SEGGER J-Link serial number starts with its board number.
NORDIC_KITS = (
    Kit(name="nRF9160 DK", at_port=0, serial_prefixes=("0009600",)),
    Kit(name="nRF9161 DK", at_port=0, serial_prefixes=("0010509",)),
    Kit(name="nRF9131 EK", at_port=0, serial_prefixes=("0010510",)),
    Kit(name="nRF9151 DK", at_port=0, serial_prefixes=("0010512", "0010520")),
    Kit(name="Thingy:91 X", at_port=0, serial_prefixes=("0010513", "0010550", "0010551"),
        products=("THINGY91X",)),
    Kit(name="Thingy:91", at_port=0, serial_prefixes=("THINGY91", "PCA20035"),
        products=("THINGY91", "PCA20035")),
)
#: Serial numbers of other Nordic kits start so (their AT port is not known).
_OTHER_NORDIC_PREFIX = "00105"


def kit_of(serial: str | None, product: str | None) -> Kit | None:
    """The kit a USB serial number (or, for a Thingy, a product string) names, or None. The
    longest product match wins (``THINGY91X`` before ``THINGY91``)."""
    for kit in NORDIC_KITS:
        if serial and any(serial.startswith(p) for p in kit.serial_prefixes):
            return kit
    if product:
        named = [(len(p), kit) for kit in NORDIC_KITS for p in kit.products
                 if product.upper().startswith(p)]
        if named:
            return max(named, key=lambda item: item[0])[1]
    return None


def unknown_nordic_kit(serial: str | None) -> bool:
    """Whether ``serial`` looks like a Nordic kit's that :data:`NORDIC_KITS` does not know."""
    return (serial is not None and serial.startswith(_OTHER_NORDIC_PREFIX)
            and kit_of(serial, None) is None)
