"""Exception types.  Every message names the file, the record and the fix."""


class CaffeDataError(Exception):
    """Base class of every error caffedata raises on purpose."""


class SpecError(CaffeDataError, ValueError):
    """A prototxt, a layer definition or an argument is invalid."""


class DatabaseError(CaffeDataError, OSError):
    """A database cannot be opened or read (missing path, wrong backend)."""


class RecordError(CaffeDataError, ValueError):
    """One record of a database is corrupt or does not fit the batch.

    The message reads ``<db>: record '<key>' (#<index>): <reason> -- <hint>``.
    """

    def __init__(self, db_path, key, index, reason, hint=""):
        self.db_path = str(db_path)
        self.key = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else str(key)
        self.index = index
        self.reason = reason
        self.hint = hint
        where = f"record '{self.key}'" + (f" (#{index})" if index is not None else "")
        text = f"{self.db_path}: {where}: {reason}"
        if hint:
            text += f" -- {hint}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.db_path, self.key, self.index, self.reason, self.hint))


class OpsLibraryError(CaffeDataError, RuntimeError):
    """The compiled CaffeOp/CaffeLoss library is missing or failed to load."""
