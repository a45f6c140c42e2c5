from fleet import interrupts

interrupts.catch()  # first of all: see fleet.interrupts

from fleet.cli import entry  # noqa: E402

entry()
