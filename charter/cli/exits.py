"""The CLI's exit codes, one table for every command (scripts branch on them).

  0  done
  1  the command ran and found a failure: a test failed, a chain is broken, a check refused
  2  usage or bad input: an unknown option, a malformed value, settings that cannot work
  3  not found: no run, approval, agent, user, token or record by that id or name
  4  refused: no credential, or the API said no (401 not a valid credential, 403 not
     permitted, 409 not in a state that allows it: already decided, withdrawn)
  5  unavailable: no stack, broker, store or API where the settings say
130  interrupted (Ctrl-C)
"""

from __future__ import annotations

from charter.api_client import ApiCallFailed
from charter.errors import CharterError, NotFound, Refused, Unavailable

DONE = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
REFUSED = 4
UNAVAILABLE = 5
INTERRUPTED = 130


def for_error(exc: CharterError) -> int:
    if isinstance(exc, ApiCallFailed):
        return _for_status(exc.status)
    for kind, code in ((NotFound, NOT_FOUND), (Refused, REFUSED), (Unavailable, UNAVAILABLE)):
        if isinstance(exc, kind):
            return code
    return USAGE


def _for_status(status: int) -> int:
    if status == 404:
        return NOT_FOUND
    if status in (401, 403, 409):
        return REFUSED
    return UNAVAILABLE if status >= 500 else USAGE
