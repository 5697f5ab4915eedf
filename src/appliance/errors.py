"""Errors the CLI turns into one readable line and an exit code."""


class ApplianceError(Exception):
    """A failure the user can act on; the message is one line that says what and how to fix it."""

    exit_code = 1


class UsageError(ApplianceError):
    """Bad input from the user: an unknown playbook, a missing inventory, an unknown node."""

    exit_code = 2
