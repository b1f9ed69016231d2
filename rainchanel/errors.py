"""The exception hierarchy: one root, one subclass per domain failure.

Each subclass that can reach an HTTP client carries the status code it maps
to, so the server turns any of them into an error envelope in one place.
"""


class RainChanelError(Exception):
    """Root of every error RainChanel raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RainChanelError):
    """A configuration file or value is invalid; start-up stops."""


class InvalidRequest(RainChanelError):
    """The request is malformed or a value in it is out of range."""

    status_code = 400


class InvalidModule(InvalidRequest):
    """The submitted bytes are not a WebAssembly module a worker can run."""


class UnknownFunction(InvalidRequest):
    """The requested function is not exported by the module."""


class InvalidArguments(InvalidRequest):
    """The arguments do not match the function's parameter types."""


class Unauthorized(RainChanelError):
    """Credentials or the bearer token are missing, wrong or expired."""

    status_code = 401


class Forbidden(RainChanelError):
    """The caller is authenticated but may not act on this resource."""

    status_code = 403


class NotFound(RainChanelError):
    """The requested resource does not exist, or is not the caller's."""

    status_code = 404


class Conflict(RainChanelError):
    """The request conflicts with the current state (taken name, lost lease)."""

    status_code = 409


class PayloadTooLarge(RainChanelError):
    """A body, module or result is over its configured size limit."""

    status_code = 413


class ServiceUnavailable(RainChanelError):
    """A dependency such as the database cannot be reached."""

    status_code = 503
