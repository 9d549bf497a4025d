"""Conditional hyperparameters: ``when: lora_r > 0`` on a searched or fixed one makes it active only when its
condition holds; an inactive one is not sampled, not stored with the trial and not exported (training uses its
default, which the active config then does not depend on).

A condition is clauses joined by ``and``, each ``NAME OP VALUE``: OP one of ``== != > >= < <=`` or ``in`` /
``not in`` with a list, VALUE a YAML value. A clause on a parameter that is itself inactive does not hold.

>>> when = parse("lora_r > 0 and scheduler in [linear, cosine]")
>>> holds(when, {"lora_r": 8, "scheduler": "cosine"}), holds(when, {"lora_r": 0, "scheduler": "cosine"})
(True, False)
>>> can_hold(parse("lora_r > 64")[0], {"type": "int", "low": 0, "high": 64})
False
>>> parse("learning_rate < 2e-4")[0].value
0.0002
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

OPERATORS = ("==", "!=", ">=", "<=", ">", "<", "not in", "in")
_CLAUSE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(==|!=|>=|<=|>|<|not\s+in\b|in\b)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Clause:
    """``name op value``: one test of another hyperparameter's value."""

    name: str
    op: str
    value: Any

    def test(self, actual: Any) -> bool:
        op, v = self.op, self.value
        if op == "in":
            return actual in v
        if op == "not in":
            return actual not in v
        if op == "==":
            return actual == v
        if op == "!=":
            return actual != v
        try:
            return {"<": actual < v, "<=": actual <= v, ">": actual > v, ">=": actual >= v}[op]
        except TypeError:  # a string compared with a number: the condition does not hold
            return False


def parse(text: Any) -> list[Clause]:
    """The clauses of a condition string; ValueError says what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a condition such as 'lora_r > 0' (clauses joined by 'and')")
    out = []
    for part in re.split(r"\s+and\s+", text.strip()):
        m = _CLAUSE.match(part)
        if not m:
            raise ValueError(f"cannot read '{part}': write NAME OP VALUE with OP one of {', '.join(OPERATORS)}")
        name, op, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
        try:
            value = _number(yaml.safe_load(raw))
        except yaml.YAMLError:
            raise ValueError(f"cannot read the value '{raw}' in '{part}'") from None
        if isinstance(value, list):
            value = [_number(v) for v in value]
        if op in ("in", "not in") and not isinstance(value, list):
            raise ValueError(f"'{part}': {op} takes a list, e.g. [linear, cosine]")
        if op in ("<", "<=", ">", ">=") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"'{part}': {op} compares with a number")
        out.append(Clause(name, op, value))
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``2e-4`` (no dot) as a string; in a condition it is the number everyone means."""
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value) else value
        except ValueError:
            return value
    return value


def holds(clauses: list[Clause], values: Mapping[str, Any]) -> bool:
    """Whether every clause holds for the active ``values`` (a name missing from them is inactive)."""
    return all(c.name in values and c.test(values[c.name]) for c in clauses)


def can_hold(clause: Clause, domain: Mapping[str, Any]) -> bool:
    """Whether ``clause`` holds for some value of a parameter searched as ``domain`` (a params entry) or fixed to
    ``domain["value"]``."""
    if "value" in domain:
        return clause.test(domain["value"])
    if domain.get("type") == "categorical":
        return any(clause.test(v) for v in domain.get("choices", []))
    low, high = domain.get("low"), domain.get("high")
    if low is None or high is None:
        return True
    op, v = clause.op, clause.value
    integer = domain.get("type") == "int"
    if op in ("in", "not in"):
        inside = [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool) and low <= x <= high
                  and (not integer or float(x).is_integer())]
        return bool(inside) if op == "in" else not (low == high and low in v)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return op == "!="
    return {"==": low <= v <= high and (not integer or float(v).is_integer()), "!=": not (low == high == v),
            ">": high > v, ">=": high >= v, "<": low < v, "<=": low <= v}[op]


def order(conditions: Mapping[str, list[Clause]], names: list[str]) -> list[str]:
    """``names`` so that each comes after every name its condition reads; ValueError names a cycle."""
    done: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise ValueError(" -> ".join(cycle))
        state[name] = 1
        for clause in conditions.get(name, []):
            if clause.name in names:
                visit(clause.name, path + [name])
        state[name] = 2
        done.append(name)

    for name in names:
        visit(name, [])
    return done


def inactive(conditions: Mapping[str, list[Clause]], values: Mapping[str, Any]) -> set[str]:
    """The names whose condition does not hold for ``values`` (every hyperparameter's value), conditions read in
    dependency order so that a name depending on an inactive one is inactive too."""
    active = dict(values)
    off: set[str] = set()
    for name in order(conditions, list(conditions)):
        if not holds(conditions[name], active):
            off.add(name)
            active.pop(name, None)
    return off
