"""The exceptions the engine raises for input a user can fix.

Each message names the value received and the rule it broke, so the command line can print it
as one line and exit 2.
"""


class LbaError(Exception):
    """Base of every error lba reports to the user without a traceback."""


class StudyError(LbaError):
    """A study file, or a ``--set`` override, is malformed."""


class DataError(LbaError):
    """A dataset is missing, truncated or corrupt."""


class StoreError(LbaError):
    """The SQLite store cannot be opened or written."""


class RunInterrupted(LbaError):
    """A run was stopped by the user (Ctrl-C or SIGTERM); its rows up to the last epoch stay."""


class RunPruned(LbaError):
    """A tuning trial was stopped early by its pruner; its epochs stay, its status is pruned."""
