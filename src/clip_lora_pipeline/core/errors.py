"""The one base class of the errors a user can fix: bad data, bad parameters, a missing
download or file. Their messages say what went wrong, where (the file or parameter) and
what to do, so ``kedro run`` prints the message alone and keeps the traceback for the
log file; any other exception is a bug and keeps its full traceback."""


class UserError(Exception):
    """A mistake in the data, the parameters or the setup, explained by its message."""


class SettingsError(UserError, ValueError):
    """A parameter that cannot work; the message names its key."""
