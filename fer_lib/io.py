"""File I/O every step shares: atomic writes, the clean-up of a killed writer's partial files, config
files, and URLs shown without their password.

    from fer_lib.io import write_atomic
    write_atomic("reports/x/metrics.json", text)   # a str, bytes, or a function given a temporary path
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from .errors import UserError

# A partial file's name: <stem>.<writer pid>-<random>.partial<suffix>. The pid tells a dead writer's
# leftovers from a live one's; the suffix is kept because savefig, OpenCV and PIL read the format from it.
PARTIAL = re.compile(r"\.(?P<pid>\d+)-[0-9a-f]{8}\.partial")


def partial_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def write_atomic(path, content) -> Path:
    """Write `content` (str, bytes, or a function given a temporary path) to `path` through a
    temporary file in the same folder and a rename: a crash or Ctrl-C never leaves a half-written
    file, and concurrent writers (Optuna workers) each publish one whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None or e.filename == str(path):
            raise
        # the cause, named by the file the user asked for, not our temporary one (no space, no permission)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs here (any user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def clean_stale_partials(folder) -> list[Path]:
    """Delete the partial files write_atomic left in `folder` when its writer was killed (the pid in
    the name no longer runs); live writers' files stay."""
    removed = []
    for tmp in Path(folder).glob("*.partial*"):
        m = PARTIAL.search(tmp.name)
        if not m:
            continue
        if pid_alive(int(m["pid"])):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]*)@", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Every `scheme://user:PASSWORD@host` in text shown as `scheme://user:***@host`."""
    return URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", str(text))


def split_url_password(url: str) -> tuple[str, str | None]:
    """(url without its password, the password or None): `postgresql://u:pw@h/db` -> (`postgresql://u@h/db`, `pw`)."""
    m = URL_PASSWORD.search(url)
    if not m:
        return url, None
    return url[:m.start()] + m["head"] + "@" + url[m.end():], m["password"]


def read_config(path, section: str | None = None) -> dict:
    """A JSON or YAML file of settings as a dict; with `section`, that section of a file that has one (a
    profile, configs/profiles/*.yaml, holds one per step), else the whole file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path}: not found")
    text = path.read_text()
    import yaml
    try:
        values = (yaml.safe_load(text) or {}) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as e:
        raise UserError(f"config file {path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'} ({e})") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path}: expected a mapping of settings, got {type(values).__name__}")
    if section and isinstance(values.get(section), dict):
        return dict(values[section])
    return values
