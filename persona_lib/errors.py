"""Exceptions that carry the process exit code a scheduler can act on.

Exit codes (documented in README): 0 success, 2 usage, 3 bad input or config,
4 a missing dependency (Java, Maven, JARs, a model), 5 another job holds the writer lock
(or a concurrent writer won a Delta commit), 1 anything else.
"""


class PersonasError(Exception):
    """Base class: an error whose message tells the user what to do."""

    exit_code = 1


class UsageError(PersonasError):
    exit_code = 2


class InputError(PersonasError):
    """Bad input data or configuration; the message names the file, row or field."""

    exit_code = 3


class ConfigError(InputError):
    pass


class DependencyError(PersonasError):
    """A dependency (Java, Maven, the Spark JARs, a model) is missing."""

    exit_code = 4


class LockHeldError(PersonasError):
    """Another job writes this work dir now: retry later, or pass --wait."""

    exit_code = 5
