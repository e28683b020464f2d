"""One error type for mistakes the user can fix: the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """A problem in the user's input (config, data, arguments, run directory).

    The message must name the file/key/row, the offending value and what to change.
    """

    exit_code = 2
