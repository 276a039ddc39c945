"""The one error convention of the `fer` commands (a leaf: imports nothing of ours).

A user's mistake (a missing or foreign file, a bad option) raises UserError, or a ValueError /
OSError whose message names the culprit; `fer` prints it as one line on stderr and exits 2.
"""


class UserError(ValueError):
    """A mistake in what the user gave us; the message names the file, split or option, and the fix."""


def same_path(a, b) -> bool:
    """Whether paths a and b name one file: the same inode when both exist (hard links, and the other
    case of a name on a case-insensitive file system), else the same absolute, normalised path."""
    import os
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def inside(path, folder) -> bool:
    """Whether `path` is `folder` or lies under it (resolved: links and .. followed)."""
    from pathlib import Path
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return same_path(path, folder) or any(same_path(p, folder) for p in path.parents)


def check_output_path(path, flag: str = "output", overwrite: bool = True, inputs=()) -> None:
    """Raise UserError, before any work, when `path` cannot become a file: it is one of the command's
    `inputs` (whatever overwrite says), a directory, a parent is a file, the folder it would go in is
    not writable, or (overwrite=False) it exists."""
    import os
    from pathlib import Path
    path = Path(path)
    for source in inputs:
        if source is not None and same_path(path, source):
            raise UserError(f"{flag} {path}: is an input of this command ({source}); write the output elsewhere")
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
        raise UserError(f"{flag} {path}: exists; pass --overwrite to replace it, or give another {flag}")
