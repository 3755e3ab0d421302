"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input a user can fix (a wrong option, a missing file, an unreachable server).

    The message is the whole report: say what is wrong and what to do.
    """
