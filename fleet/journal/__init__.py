"""The crash-safe journal: SQLite (stdlib), WAL, ``synchronous=FULL``, one writer.

How this works
--------------
Every side effect on a device is bracketed by two durable writes: an *intent* step row before the
command is sent and its *outcome* after the answer (``ok``: done and, for a %KEYGEN, the answer
captured and verified; ``error``: the modem refused, nothing changed; ``unknown``: timeout,
disconnect or an unverifiable answer - the command may or may not have taken effect). A run killed
with SIGKILL at any instant therefore leaves, for every key, either a captured answer or an
unresolved intent, and the next run decides from that (see :mod:`fleet.provision.decide`).

Tables: ``runs``; ``devices`` (by IMEI, with the device UUID once known); ``keys`` (what fleet
knows about each (IMEI, sec_tag, type): the captured answer, a pre-existing marker, the latest
unresolved %KEYGEN intent); ``steps`` (the append-only log of intents and outcomes, with attempt
counts and errors); ``run_devices`` and ``run_keys`` (per-run results, for the manifest);
``certs`` (per (IMEI, sec_tag, type 1 or 0): the certificate or chain fleet issued or found, the
SHA-256 of the CSR it was issued for, its confirmation, and the latest run's outcome for it).
:meth:`Journal.run_report` reads one run back as typed records, the one source of every record
of it (:mod:`fleet.report`).

Writes are group-committed (:mod:`fleet.journal.engine`): the operations all slots queue in one
turn of the event loop run in one transaction (one SQLite connection, so one writer) and every
caller returns only after the COMMIT that contains its operation. Each call is shielded from
cancellation, so a Ctrl-C never leaves half an operation. A journal is locked (``flock`` on the
database file itself, whatever name it is opened by) by the run using it; a killed run's lock
goes with its process. It records the station it is made for and refuses another station's, and
a file that is not a fleet journal is refused untouched (:mod:`fleet.journal.files`).
"""

from fleet.journal.core import Journal
from fleet.journal.records import (
    DeviceInfo,
    KeyResult,
    KeyRow,
    RunInfo,
    RunReport,
    SlotRow,
    utc_now,
)
from fleet.state import CertState, CertStateKind, KeyState, KeyStateKind, PendingIntent

__all__ = ["CertState", "CertStateKind", "DeviceInfo", "Journal", "KeyResult", "KeyRow",
           "KeyState", "KeyStateKind", "PendingIntent", "RunInfo", "RunReport", "SlotRow",
           "utc_now"]
