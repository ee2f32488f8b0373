class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or unreadable; the message says which path or package fixes it."""
