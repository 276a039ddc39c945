"""The one error convention of the `fer` commands (a leaf: imports nothing of ours).

A user's mistake (a missing or foreign file, a bad option) raises UserError, or a ValueError /
OSError whose message names the culprit; `fer` prints it as one line on stderr and exits 2.
"""


class UserError(ValueError):
    """A mistake in what the user gave us; the message names the file, split or option, and the fix."""


def check_output_path(path, flag: str = "output", overwrite: bool = True) -> None:
    """Raise UserError, before any work, when `path` cannot become a file: it is a directory, a
    parent is a file, the folder it would go in is not writable, or (overwrite=False) it exists."""
    import os
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write in {parent}")
    if not overwrite and path.exists():
        raise UserError(f"{path} exists; pass --overwrite to replace it")
