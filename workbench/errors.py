"""User-facing errors.

Every error the CLI can show derives from WorkbenchError. Its message names what
was wrong and what to do instead; the CLI prints it without a traceback.
"""


class WorkbenchError(Exception):
    """An error caused by input or environment, with a message meant for the user."""


class UnknownHookError(WorkbenchError):
    pass


class ModelLoadError(WorkbenchError):
    pass


class CorpusError(WorkbenchError):
    pass


class StoreError(WorkbenchError):
    pass


class StoreVersionError(StoreError):
    pass


class StoreLockedError(StoreError):
    pass


class CorruptShardError(StoreError):
    pass


class RunConflictError(StoreError):
    pass


class ReadOnlySqlError(WorkbenchError):
    pass


class ProbeError(WorkbenchError):
    pass


class DictionaryError(WorkbenchError):
    """A sparse dictionary that is missing, unfinished or does not fit what it is used with."""


class CodebookError(WorkbenchError):
    """Codebooks that are missing, unfinished or do not fit the model they are opened with."""


class EvaluationError(WorkbenchError):
    """A benchmark that cannot run as asked: too few examples, an unreachable endpoint, a dictionary not encoded."""
