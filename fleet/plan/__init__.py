"""The plan: a YAML file saying which keys each device slot gets, loaded into typed records.

``load_plan(path)`` reads and validates a plan and returns a :class:`Plan`; every problem in the
file is reported at once as ``file:line: reason`` in one :class:`~fleet.errors.PlanError`. See
the README section "Plans" for the format. Modules: ``model`` (the records), ``loader``
(``load_plan``), ``fields`` (the value types and their rules), ``schema`` (sections constructed
from the file, errors with lines), ``source`` (YAML with line numbers), ``ports`` (port forms and
expansion), ``templates`` (``{placeholder}`` strings).
"""

from fleet.plan.loader import load_plan
from fleet.plan.model import (
    BAUDRATES,
    FAULT_NAMES,
    MAX_SEC_TAG,
    IfExists,
    KeySpec,
    KeyType,
    Plan,
    Response,
    Settings,
    SimulatorSettings,
    Slot,
)
from fleet.plan.templates import ATTRIBUTE_PLACEHOLDERS, MANIFEST_PLACEHOLDERS, Template

__all__ = [
    "ATTRIBUTE_PLACEHOLDERS",
    "BAUDRATES",
    "FAULT_NAMES",
    "MANIFEST_PLACEHOLDERS",
    "MAX_SEC_TAG",
    "IfExists",
    "KeySpec",
    "KeyType",
    "Plan",
    "Response",
    "Settings",
    "SimulatorSettings",
    "Slot",
    "Template",
    "load_plan",
]
