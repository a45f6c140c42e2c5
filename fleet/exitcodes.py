"""Process exit codes (DESIGN.md, Command line)."""

OK = 0  #: every device done / every check passed
FAILED = 1  #: at least one device (or check) failed; the others still finished
USAGE = 2  #: usage or plan error: nothing was sent to any device
INTERRUPTED = 3  #: interrupted; the journal is consistent and a re-run resumes

__all__ = ["FAILED", "INTERRUPTED", "OK", "USAGE"]
