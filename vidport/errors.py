"""Errors a user can hit (the shared base of vidport.porting, .parity and .runtime). The CLI prints their
message as one line and exits with code 2."""


class UserError(Exception):
    """Expected failure caused by input: the message names the file/key/value and the fix."""


class SourceError(UserError):
    """A state-dict source that cannot be opened or read."""


class ConvertError(UserError):
    """A conversion that cannot start or finish; the target is untouched."""
