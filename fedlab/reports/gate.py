"""``fedlab-gate RUN_DIR --policy FILE``: a release gate, the policy as code.

A policy is a YAML file of rules over the run record::

    rules:
      accuracy: {min: 0.9}                  # a dotted results.json key with bounds
      privacy.epsilon: {max: 8}
      carbon.emissions_kg: {max: 0.01}
      clients.accuracy_worst_10pct: {min: 0.8}
      status: completed                     # a value: equality (or {one_of: [...]})
      lineage: verified                     # fedlab-lineage's check passes
      model_card: present                   # model_card.md exists

A key is a dotted path into ``results.json`` (``privacy.client_epsilons[0]``, or ``.0``;
``[-1]`` is the last item), so the gate needs nothing from the trackers that write the
sections (``personalized_accuracy.worst_10pct``, an audit's disparity): a new section is
gated by naming it. ``clients.*`` keys (``accuracy_mean``, ``accuracy_std``,
``accuracy_min``, ``accuracy_max``, ``accuracy_worst_10pct``, ``evaluated``) are the spread
of the clients' local test accuracy that the model card shows, derived from ``clients.csv``
(unless ``results.json`` has a ``clients`` key of its own).

The gate prints every rule with its value and pass/fail, writes the verdict into
``results.json`` (``gate``: the policy, its sha256, each rule, the outcome, when) and the model
card, tags a tracked run in MLflow (``fedlab.gate``), and exits 0 when every rule holds and 1
otherwise. A recorded value that is null (not measured: carbon off, no privacy) fails its
bound: a release policy cannot be met by a number that is not there. Bad input (a policy that
names a key the record lacks, a malformed rule or file, no run record) is one line and exit 2,
and nothing is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from fedlab.record import lineage
from fedlab.record.reader import ReadError, Run, cell, load_run, number
from fedlab.record.run_dir import RESULTS, now, write_json
from fedlab.reports.model_card import CARD, client_fairness, write_model_card

PROG = "fedlab-gate"
#: The special rules and the one value each takes.
SPECIAL = {"lineage": "verified", "model_card": "present"}
BOUNDS = ("min", "max", "equals", "one_of")
_TOKEN = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")


class GateError(ValueError):
    """Bad input: one line on stderr, exit status 2, nothing written."""


# --------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule: a record key and what its value must be (``special``: lineage, model card)."""

    key: str
    min: float | None = None
    max: float | None = None
    equals: Any = None
    one_of: tuple[Any, ...] | None = None
    special: str | None = None

    @property
    def bound(self) -> str:
        """The rule's condition in words (``>= 0.9``, ``in [0.1, 1]``, ``verified``)."""
        if self.special is not None:
            return SPECIAL[self.special]
        if self.one_of is not None:
            return f"one of {', '.join(cell(v) for v in self.one_of)}"
        if self.min is None and self.max is None:
            return f"= {cell(self.equals)}"
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


def _bound(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or number(value) is None:
        raise GateError(f"{where}: '{name}' must be a number, got {value!r}")
    return float(value)


def parse_rule(key: str, spec: Any, where: str) -> Rule:
    """A rule from its policy entry; :class:`GateError` naming the rule when malformed."""
    where = f"{where}: rule '{key}'"
    if key in SPECIAL and not isinstance(spec, Mapping):
        if spec != SPECIAL[key]:
            raise GateError(f"{where}: allowed value is '{SPECIAL[key]}', got {spec!r}")
        return Rule(key, special=key)
    if not isinstance(spec, Mapping):  # a plain value: the record must hold exactly that
        return Rule(key, equals=spec)
    unknown = sorted(set(spec) - set(BOUNDS))
    if unknown or not spec:
        raise GateError(f"{where}: unknown bound {', '.join(map(str, unknown)) or '(none)'}; "
                        f"allowed: {', '.join(BOUNDS)}")
    if ("equals" in spec or "one_of" in spec) and len(spec) > 1:
        raise GateError(f"{where}: 'equals' and 'one_of' stand alone (not with other bounds)")
    if "one_of" in spec:
        if not isinstance(spec["one_of"], list) or not spec["one_of"]:
            raise GateError(f"{where}: 'one_of' must be a non-empty list")
        return Rule(key, one_of=tuple(spec["one_of"]))
    if "equals" in spec:
        return Rule(key, equals=spec["equals"])
    low = _bound(spec["min"], where, "min") if "min" in spec else None
    high = _bound(spec["max"], where, "max") if "max" in spec else None
    if low is not None and high is not None and low > high:
        raise GateError(f"{where}: min {low:g} is above max {high:g}")
    return Rule(key, min=low, max=high)


@dataclass(frozen=True)
class Policy:
    """A loaded policy: where it came from, its sha256 and its rules in file order."""

    path: Path
    sha256: str
    rules: tuple[Rule, ...]


def find_policy(name: str) -> Path:
    """The policy file ``--policy`` names: a path, or the name of one shipped with fedlab
    (``release`` is ``conf/policies/release.yaml``)."""
    path = Path(name)
    if path.is_file() or path.suffix or "/" in name:
        return path
    from importlib.resources import files

    shipped = Path(str(files("fedlab.conf") / "policies" / f"{name}.yaml"))
    return shipped if shipped.is_file() else path


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; :class:`GateError` (naming the file) when unusable."""
    try:
        data = path.read_bytes()
        doc = yaml.safe_load(data)
    except OSError as err:
        raise GateError(f"{path}: cannot read the policy ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise GateError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("rules"), Mapping):
        raise GateError(f"{path}: a policy is a mapping with 'rules: {{KEY: BOUND, ...}}'")
    unknown = sorted(set(doc) - {"rules", "description"})
    if unknown:
        raise GateError(f"{path}: unknown key '{unknown[0]}'; allowed: rules, description")
    if not doc["rules"]:
        raise GateError(f"{path}: 'rules' is empty")
    rules = tuple(parse_rule(str(k), v, str(path)) for k, v in doc["rules"].items())
    return Policy(path, hashlib.sha256(data).hexdigest(), rules)


# --------------------------------------------------------------------------------------
# Values from the record
# --------------------------------------------------------------------------------------


class MissingKey(LookupError):
    """The record has no such key; ``has`` lists what it has where the path stopped."""

    def __init__(self, has: str) -> None:
        super().__init__(has)
        self.has = has


def derived_values(run: Run) -> dict[str, Any]:
    """The ``clients.*`` values: the clients' local accuracy spread, as the model card
    computes it (:func:`~fedlab.reports.model_card.client_fairness`), None when no client
    evaluated."""
    f = client_fairness(run.clients)
    return {
        "accuracy_mean": f and f.mean, "accuracy_std": f and f.std, "accuracy_min": f and f.min,
        "accuracy_max": f and f.max, "accuracy_worst_10pct": f and f.worst_mean,
        "evaluated": f.clients if f else 0,
    }


def lookup(run: Run, key: str) -> Any:
    """The value at dotted ``key`` (list items by ``[i]`` or ``.i``); :class:`MissingKey`."""
    tokens = [int(i) if i else (int(n) if n.lstrip("-").isdigit() else n)
              for i, n in _TOKEN.findall(key)]
    node: Any = run.results
    if tokens and tokens[0] == "clients" and "clients" not in run.results:
        node = {"clients": derived_values(run)}
    for token in tokens:
        if isinstance(node, Mapping) and str(token) in node:
            node = node[str(token)]
        elif isinstance(node, list) and isinstance(token, int) and -len(node) <= token < len(node):
            node = node[token]
        elif isinstance(node, Mapping):
            keys = list(node)
            listed = ", ".join(map(str, keys[:15])) + (", ..." if len(keys) > 15 else "")
            raise MissingKey(listed or "nothing")
        elif isinstance(node, list):
            raise MissingKey(f"a list of {len(node)} item(s)")
        else:
            raise MissingKey(f"the value {cell(node)!s}, not a section")
    return node


def _same(value: Any, expected: Any) -> bool:
    """Equality as a policy means it: numbers as numbers (8 == 8.0), the rest exactly."""
    a, b = number(value), number(expected)
    if a is not None and b is not None and not isinstance(value, str | bool):
        return a == b
    return bool(value == expected)


@dataclass(frozen=True)
class Outcome:
    """A rule checked: the value found and whether it holds (``note``: why, when it fails)."""

    rule: Rule
    value: Any
    passed: bool
    note: str = ""

    def as_record(self) -> dict[str, Any]:
        return {"rule": self.rule.key, "bound": self.rule.bound, "value": self.value,
                "passed": self.passed, **({"note": self.note} if self.note else {})}


def check(run: Run, rule: Rule, where: str) -> Outcome:
    """Check one rule against the record; :class:`GateError` for a key it does not have or
    a bound on a value that is not a number (the policy is wrong, not the run)."""
    if rule.special == "lineage":
        try:
            result = lineage.verify(run.path)
        except lineage.LineageError as err:
            return Outcome(rule, "not recorded", False, str(err))
        failure = result.failure
        return Outcome(rule, "verified" if failure is None else "mismatch", failure is None,
                       "" if failure is None else failure.message)
    if rule.special == "model_card":
        present = (run.path / CARD).is_file() and (run.path / CARD).stat().st_size > 0
        return Outcome(rule, "present" if present else "absent", present)
    try:
        value = lookup(run, rule.key)
    except MissingKey as err:
        raise GateError(f"{where}: rule '{rule.key}': the record has no key '{rule.key}' "
                        f"(it has: {err.has})") from None
    if rule.min is None and rule.max is None:
        allowed = rule.one_of if rule.one_of is not None else (rule.equals,)
        return Outcome(rule, value, any(_same(value, v) for v in allowed))
    if value is None:
        return Outcome(rule, None, False, "null: not measured in this run")
    if isinstance(value, bool) or number(value) is None:
        raise GateError(f"{where}: rule '{rule.key}': bounds need a number, the record has "
                        f"{cell(value)!r}")
    v = float(value)
    passed = (rule.min is None or v >= rule.min) and (rule.max is None or v <= rule.max)
    return Outcome(rule, value, passed)


def evaluate(run: Run, policy: Policy) -> list[Outcome]:
    """Every rule of ``policy`` against ``run``, in the policy's order (all are checked
    before anything is reported, so a bad key fails the gate before a word is written)."""
    return [check(run, rule, str(policy.path)) for rule in policy.rules]


# --------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------


def verdict(policy: Policy, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """``results.json``'s ``gate`` section."""
    return {
        "policy": str(policy.path), "policy_sha256": policy.sha256,
        "passed": all(o.passed for o in outcomes),
        "failed": [o.rule.key for o in outcomes if not o.passed],
        "rules": [o.as_record() for o in outcomes], "at": now(),
    }


def record_verdict(run_dir: Path, section: dict[str, Any]) -> list[str]:
    """Write the verdict into ``results.json`` and the model card (both atomically) and tag
    a tracked run; returns warnings to print (a tag that could not be set)."""
    path = run_dir / RESULTS
    results = json.loads(path.read_text())
    results["gate"] = section
    write_json(path, results)
    write_model_card(run_dir)
    tracking = results.get("tracking")
    if not (isinstance(tracking, Mapping) and tracking.get("run_id")):
        return []
    try:  # the MLflow tracker is optional (the `tracking` extra): import only when tracked
        from fedlab.trackers.tracking.mlflow import tag_run
    except ImportError as err:
        return [f"MLflow run {tracking['run_id']} not tagged: {err}"]
    try:
        tag_run(tracking, {"fedlab.gate": "passed" if section["passed"] else "failed"})
    except Exception as err:  # a server down must not lose the verdict already written
        return [f"MLflow run {tracking['run_id']} not tagged: {err}"]
    return []


def _shown(outcome: Outcome) -> str:
    value = outcome.value
    text = "n/a" if value is None else (
        format(float(value), ".6g") if number(value) is not None and not isinstance(value, str)
        else cell(value))
    return text + (f" ({outcome.note})" if outcome.note else "")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage: errors must stay one line."""

    def error(self, message: str) -> NoReturn:
        raise GateError(message)


def parser() -> argparse.ArgumentParser:
    """The command line of ``fedlab-gate``."""
    p = _Parser(prog=PROG, description="Check a run record against a release policy (YAML "
                "rules over results.json keys); exit 1 if any rule fails.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a fedlab run directory")
    p.add_argument("--policy", required=True, metavar="FILE",
                   help="the policy YAML, or the name of a shipped one (release)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: 0 every rule holds, 1 one fails, 2 bad input."""
    try:
        args = parser().parse_args(argv)
        policy = load_policy(find_policy(args.policy))
        run = load_run(args.run_dir)
        outcomes = evaluate(run, policy)
    except (GateError, ReadError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: policy {policy.path} (sha256 {policy.sha256[:12]}) on {args.run_dir}")
    width = max(len(o.rule.key) for o in outcomes)
    for o in outcomes:
        print(f"  {'PASS' if o.passed else 'FAIL'}  {o.rule.key:<{width}}  "
              f"{o.rule.bound:<14} {_shown(o)}")
    section = verdict(policy, outcomes)
    for warning in record_verdict(args.run_dir, section):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    failed = section["failed"]
    where = f"verdict written to {RESULTS} and {CARD}"
    if failed:
        print(f"{PROG}: failed: {len(failed)} of {len(outcomes)} rules ({', '.join(failed)}); "
              f"{where}")
        return 1
    print(f"{PROG}: passed: all {len(outcomes)} rules; {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
