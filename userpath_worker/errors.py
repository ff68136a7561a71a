"""Errors a person can act on.

Every ``UserError`` carries one line that says what was wrong and what to do. The CLI and the
worker's start-up print that line and exit non-zero, without a traceback.
"""


class UserError(Exception):
    """A mistake in input or configuration that the person running the command can fix."""

    exit_code = 1


class NotFound(UserError):
    """A named organization, member or key does not exist."""


class PermissionDenied(UserError):
    """The acting member lacks the role the operation requires."""


class Conflict(UserError):
    """The operation would break a uniqueness rule (a name already in use, for instance)."""
