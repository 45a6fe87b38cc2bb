"""Rules compiled once from ``[rules.NAME]``: predicates over a row, and the message template.

A template inserts values and nothing else: ``{name}`` is looked up in a dict,
never evaluated (no attribute access, indexing or format specs; the config
refuses any other brace). Each channel passes its own ``escape`` so a value
cannot become markup (Slack), a header (e-mail) or a formula (Sheets).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from oceanus.config import Condition, RuleConfig

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]

_PART = re.compile(r"\{\{|\}\}|\{([a-z_][a-z0-9_]*)\}")


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _same(v: Any, target: Any) -> bool:
    if isinstance(target, bool) or isinstance(v, bool):
        return v is target or _text(v) == _text(target)
    if isinstance(target, int | float) and not isinstance(v, str):
        n = _number(v)
        return n is not None and n == float(target)
    return _text(v) == _text(target)


def compile_condition(c: Condition) -> Predicate:
    op, f = c.op, c.field
    if op == "all":
        parts = [compile_condition(x) for x in c.all or ()]
        return lambda row: all(p(row) for p in parts)
    if op == "any":
        parts = [compile_condition(x) for x in c.any or ()]
        return lambda row: any(p(row) for p in parts)
    if op == "eq":
        t = c.eq
        return lambda row: _same(row.get(f), t)
    if op == "ne":
        t = c.ne
        return lambda row: not _same(row.get(f), t)
    if op == "in":
        targets = tuple(c.in_ or ())
        return lambda row: any(_same(row.get(f), t) for t in targets)
    if op == "contains":
        s = c.contains or ""
        return lambda row: isinstance(row.get(f), str) and s in row[f]
    if op == "prefix":
        p = c.prefix or ""
        return lambda row: isinstance(row.get(f), str) and row[f].startswith(p)
    if op == "regex":
        rx = re.compile(c.regex or "")
        return lambda row: isinstance(row.get(f), str) and rx.search(row[f]) is not None
    if op == "exists":
        want = bool(c.exists)
        return lambda row: (row.get(f) is not None and row.get(f) != "") is want
    bound = float(getattr(c, op))
    cmp: Callable[[float, float], bool] = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }[op]

    def numeric(row: Row) -> bool:
        n = _number(row.get(f))
        return n is not None and cmp(n, bound)

    return numeric


def compile_rule(rule: RuleConfig) -> Predicate:
    parts = [compile_condition(c) for c in rule.conditions]
    if not parts:
        return lambda row: True
    if rule.match == "any":
        return lambda row: any(p(row) for p in parts)
    return lambda row: all(p(row) for p in parts)


def template_names(template: str) -> list[str]:
    return [m.group(1) for m in _PART.finditer(template) if m.group(1)]


def render(template: str, values: Mapping[str, Any], escape: Callable[[str], str] = lambda s: s) -> str:
    """``template`` with each ``{name}`` replaced by ``escape(text of the value)``; the literal text
    (the operator's) is kept as written."""

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return escape(_text(values.get(m.group(1))))

    return _PART.sub(sub, template)


def cut(value: Any, max_chars: int) -> Any:
    """A value bounded for a message: long text is cut and marked (a 1 MB field never reaches a channel)."""
    if isinstance(value, str) and len(value) > max_chars:
        return value[: max_chars - 1] + "…"
    if isinstance(value, bytes):
        return value.hex()[:max_chars]
    return value


def needed_fields(rule: RuleConfig, columns: Sequence[str]) -> tuple[str, ...]:
    """The columns a job of ``rule`` carries: what its texts insert, plus ``fields`` (default: all)."""
    wanted = list(rule.fields or columns)
    for name in (*template_names(rule.template), *template_names(rule.subject)):
        if name in columns and name not in wanted:
            wanted.append(name)
    return tuple(wanted)
