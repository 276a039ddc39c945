"""Command-line flags from a step's dataclass: one flag per field, its help the field's comment.

    add_dataclass_arguments(parser, VideoConfig)             # --smoother, --alpha, --detect-every, ...
    cfg = dataclass_from_arguments(args, VideoConfig, base)  # defaults < base (a config file) < flags given

Every flag defaults to "not given" (None), so a value from a config file is only replaced by a flag
the user typed. A bool flag alone means true (`--show`); `--show false` turns it off.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import tokenize

from .errors import UserError


def field_help(cls) -> dict[str, str]:
    """{field: the comment on its line} in the dataclass's source."""
    out = {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline))
    except (OSError, TypeError, tokenize.TokenError):
        return out
    names = {f.name for f in dataclasses.fields(cls)}
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.COMMENT:
            line = [t for t in tokens[:i] if t.start[0] == tok.start[0] and t.type not in (tokenize.INDENT, tokenize.DEDENT)]
            if line and line[0].type == tokenize.NAME and line[0].string in names:
                out[line[0].string] = tok.string.lstrip("# ").strip()
    return out


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parser_for(annotation: str):
    kind = str(annotation).replace(" ", "").split("|")[0]
    return {"int": int, "float": float, "bool": _bool, "dict": json.loads, "tuple": json.loads,
            "list": json.loads}.get(kind, str)


def add_dataclass_arguments(parser, cls, skip=(), flags: dict | None = None) -> None:
    """One --field-name flag per field of `cls` (flags renames some: {"study_name": "--study"})."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        parse = _parser_for(f.type)
        default = f.default if f.default is not dataclasses.MISSING else "..."
        kw = {"nargs": "?", "const": True, "metavar": "BOOL"} if parse is _bool else {}
        parser.add_argument((flags or {}).get(f.name, "--" + f.name.replace("_", "-")), dest=f.name, type=parse,
                            default=None, help=f"{helps.get(f.name, '')} (default {default})".strip(), **kw)


def dataclass_from_arguments(args, cls, base: dict | None = None):
    """cls built from its defaults, then `base` (e.g. a config file's section), then the flags given."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(base or {}) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(names)}")
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**{**(base or {}), **given})
