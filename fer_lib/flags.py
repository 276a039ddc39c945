"""Command-line flags from a step's dataclass: one flag per field, its help the field's comment.

    add_dataclass_arguments(parser, VideoConfig)             # --smoother, --alpha, --detect-every, ...
    cfg = dataclass_from_arguments(args, VideoConfig, base)  # defaults < base (a config file) < flags given

Every flag defaults to "not given" (None), so a value from a config file is only replaced by a flag
the user typed. A bool flag alone means true (`--show`); `--show false` turns it off.

The same dataclass is the schema of the YAML/JSON configs: a field declared with `setting()` has a
range or choices, and `check_settings` (each step's `__post_init__`) checks every field's type and
range wherever the config comes from, a flag, a file, a profile or Python, before any work starts:

    detect_every: int = setting(3, low=1)   # detect on every k-th frame
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
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
        parser.add_argument((flags or {}).get(f.name, _flag(f.name)), dest=f.name, type=parse,
                            default=None, help=f"{helps.get(f.name, '')} (default {default})".strip(), **kw)


def dataclass_from_arguments(args, cls, base: dict | None = None):
    """cls built from its defaults, then `base` (e.g. a config file's section), then the flags given."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(base or {}) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(names)}")
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**{**(base or {}), **given})


# ----------------------------------------------------------------------------- the schema

def setting(default=dataclasses.MISSING, *, low=None, high=None, above=None, below=None, choices=None,
            check=None, why=None, default_factory=dataclasses.MISSING):
    """A dataclass field with its allowed values: low <= v <= high, above < v < below, v in choices, or
    check(v) raising ValueError; `why` is said with the error. None passes when the type allows None."""
    rule = {k: v for k, v in dict(low=low, high=high, above=above, below=below, choices=choices, check=check,
                                  why=why).items() if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rule": rule})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _allowed(rule: dict) -> str:
    parts = []
    if "choices" in rule:
        parts.append("one of " + ", ".join(map(str, rule["choices"])))
    lo = [f"at least {rule['low']}"] if "low" in rule else [f"above {rule['above']}"] if "above" in rule else []
    hi = [f"at most {rule['high']}"] if "high" in rule else [f"below {rule['below']}"] if "below" in rule else []
    if lo or hi:
        parts.append(" and ".join(lo + hi))
    return "; ".join(parts)


def _type_problem(value, annotation: str) -> str | None:
    """Why value does not fit the annotation ("int", "float | None", ...), or None if it does."""
    kinds = str(annotation).replace(" ", "").split("|")
    if value is None:
        return None if "None" in kinds else "a value is needed"
    kind = kinds[0]
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if kind in ("int", "float"):
        wanted = "a whole number" if kind == "int" else "a number"
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            return f"expected {wanted}, got text (in YAML write exponents with a dot: 1.0e-3)"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {wanted}"
        if not math.isfinite(value):
            return f"expected a finite {wanted[2:]}"
        if kind == "int" and not isinstance(value, int):
            return "expected a whole number" if value != int(value) else None
        return None
    types = {"str": (str,), "dict": (dict,), "tuple": (tuple, list), "list": (list, tuple)}.get(kind)
    if types and not isinstance(value, types):
        return f"expected {'text' if kind == 'str' else 'a ' + kind}"
    return None


def check_settings(obj) -> None:
    """UserError naming the first field of dataclass `obj` whose value has the wrong type or is out of
    its setting() range: `--detect-every 0 (detect_every): must be at least 1`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{_flag(f.name)} {value} ({f.name})"
        problem = _type_problem(value, f.type)
        if problem:
            raise UserError(f"{where}: {problem}")
        if str(f.type).replace(" ", "").split("|")[0] == "int" and isinstance(value, float):
            object.__setattr__(obj, f.name, int(value))  # 3.0 from a JSON file means 3
        rule = f.metadata.get("rule")
        if not rule or value is None:
            continue
        bad = (("choices" in rule and value not in rule["choices"])
               or ("low" in rule and value < rule["low"]) or ("high" in rule and value > rule["high"])
               or ("above" in rule and value <= rule["above"]) or ("below" in rule and value >= rule["below"]))
        if bad:
            raise UserError(f"{where}: must be {_allowed(rule)}" + (f" ({rule['why']})" if "why" in rule else ""))
        if "check" in rule:
            try:
                rule["check"](value)
            except ValueError as e:
                raise UserError(f"{where}: {e}") from None
