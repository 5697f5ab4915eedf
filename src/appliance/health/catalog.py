"""The Xid catalog (catalog.yml): the action each fault asks for, and the repeat rule over time.

    catalog = Catalog.load(OVERRIDE_PATH if OVERRIDE_PATH.exists() else None)
    assessor = Assessor(catalog)
    for fault in parse_lines(kernel_lines):
        verdict = assessor.assess(fault, time.monotonic())
        if verdict.fatal: ...isolate with verdict.action and verdict.reason...

Standard library only, but for `yaml` (python3-yaml), imported when a catalog file is read.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.health.xid import Fault, pci_id

__all__ = [
    "ACTIONS",
    "BURST_SECONDS",
    "FATAL_ACTIONS",
    "OVERRIDE_PATH",
    "Assessor",
    "Catalog",
    "CatalogError",
    "Entry",
    "Verdict",
]

ACTIONS = ("reboot", "reset-gpu", "workflow", "restart-app", "ignore")
FATAL_ACTIONS = frozenset({"reboot", "reset-gpu", "workflow"})
# Where the agent reads the operator's overrides (same shape as catalog.yml).
OVERRIDE_PATH = Path("/etc/appliance/gpu-health/xid-overrides.yml")
# Lines of one code on one GPU closer than this are one occurrence for the repeat rule: the driver
# logs one fault once per channel of the process, and one crash logs several codes at once.
BURST_SECONDS = 2.0

_SECTIONS = ("unknown", "fallen_off_bus", "sxid_severity", "sxid", "xid")
_SEVERITIES = ("Fatal", "Non-fatal", "unknown")
_KEYS = ("action", "description", "repeat", "escalate", "detail_actions")
_REPEAT_KEYS = ("count", "window_seconds")
_FATAL = tuple(action for action in ACTIONS if action in FATAL_ACTIONS)  # in the order of ACTIONS


class CatalogError(ValueError):
    """A catalog or override file that cannot be used; the message is one line naming the file, the code,
    the key, the value and what is allowed."""


@dataclass(frozen=True)
class Entry:
    """What one code asks for. repeat_count 1: no repeat rule."""

    action: str
    description: str
    repeat_count: int = 1
    repeat_window: float = 0.0  # seconds
    escalate: str | None = None
    # (text, action): the first text found in the fault's detail gives the action (Xid 154 names it).
    detail_actions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The action a fault asks for after the repeat rule, fatal when the node must be isolated."""

    fault: Fault
    entry: Entry
    action: str
    fatal: bool
    reason: str  # "Xid79", "SXid12028", "GPUFallenOffBus"
    count: int  # occurrences of this code on this GPU within the entry's repeat window (1 without one)


class Catalog:
    """The entries of catalog.yml, with an operator's overrides merged in."""

    def __init__(
        self,
        xid: Mapping[int, Entry],
        sxid: Mapping[int, Entry],
        sxid_severity: Mapping[str, Entry],
        unknown: Entry,
        fallen_off_bus: Entry,
    ) -> None:
        self.xid = MappingProxyType(dict(xid))
        self.sxid = MappingProxyType(dict(sxid))
        self.sxid_severity = MappingProxyType(dict(sxid_severity))
        self.unknown = unknown
        self.fallen_off_bus = fallen_off_bus

    @classmethod
    def load(cls, override: Path | None = None) -> Catalog:
        """The packaged catalog.yml, then OVERRIDE merged per code; CatalogError for a bad override."""
        packaged = resources.files("appliance.health").joinpath("catalog.yml")
        data = _read_yaml(packaged.read_text(encoding="utf-8"), "catalog.yml")
        if override is None:
            return cls.from_data(data, data_name="catalog.yml")
        try:
            text = Path(override).read_text(encoding="utf-8")
        except OSError as error:
            raise CatalogError(
                f"{override}: cannot read the Xid catalog override: {error.strerror}"
            ) from None
        return cls.from_data(
            data, _read_yaml(text, str(override)), data_name="catalog.yml", override_name=str(override)
        )

    @classmethod
    def from_data(
        cls,
        data: dict,
        override: dict | None = None,
        *,
        data_name: str = "catalog",
        override_name: str = "override",
    ) -> Catalog:
        """A catalog from parsed YAML: DATA (every section), then OVERRIDE (any part of one) merged in.
        The names say where a bad value is in CatalogError's message."""
        base = _sections(data, data_name)
        for section in ("unknown", "fallen_off_bus", "sxid_severity"):
            if section not in base:
                raise CatalogError(f"{data_name}: section {section!r} is missing; the catalog needs it")
        missing = [severity for severity in _SEVERITIES if severity not in base["sxid_severity"]]
        if missing:
            raise CatalogError(
                f"{data_name}: sxid_severity: {missing[0]!r} is missing; needed: {_SEVERITIES}"
            )
        merged: dict[str, dict[Any, tuple[dict, str]]] = {
            section: {key: (entry, data_name) for key, entry in entries.items()}
            for section, entries in base.items()
        }
        for section, entries in _sections(override or {}, override_name).items():
            into = merged.setdefault(section, {})
            for key, entry in entries.items():
                previous = into.get(key, ({}, override_name))[0]
                combined = {**previous, **entry}
                if "repeat" in previous and "repeat" in entry:
                    combined["repeat"] = {**previous["repeat"], **entry["repeat"]}
                into[key] = (combined, override_name)
        built = {
            section: {key: _entry(entry, source, section, key) for key, (entry, source) in entries.items()}
            for section, entries in merged.items()
        }
        return cls(
            xid=built.get("xid", {}),
            sxid=built.get("sxid", {}),
            sxid_severity=built["sxid_severity"],
            unknown=built["unknown"][None],
            fallen_off_bus=built["fallen_off_bus"][None],
        )

    def entry(self, fault: Fault) -> Entry:
        """The entry for FAULT; for an Xid whose entry has detail_actions, with the action its text names."""
        if fault.kind == "xid":
            found = self.xid.get(fault.code, self.unknown)
            for text, action in found.detail_actions:
                if text in fault.detail:
                    return dataclasses.replace(found, action=action)
            return found
        if fault.kind == "sxid":
            found = self.sxid.get(fault.code)
            if found is None:
                return self.sxid_severity[fault.severity or "unknown"]
            return found
        return self.fallen_off_bus


class Assessor:
    """Verdicts on faults, with the repeat windows of the entries that have one (per code and GPU)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._occurrences: dict[tuple[str, int | None, str | None], deque[float]] = {}
        self._last_line: dict[tuple[str, int | None, str | None], float] = {}

    def assess(self, fault: Fault, now: float) -> Verdict:
        """The verdict on FAULT seen at NOW (seconds, any clock that only moves forward)."""
        entry = self.catalog.entry(fault)
        action, count = entry.action, 1
        if entry.repeat_count > 1:
            key = (fault.kind, fault.code, fault.pci)
            times = self._occurrences.setdefault(key, deque())
            last = self._last_line.get(key)
            if last is None or now - last >= BURST_SECONDS:
                times.append(now)
            self._last_line[key] = now
            horizon = now - entry.repeat_window
            while times and times[0] <= horizon:
                times.popleft()
            count = len(times)
            if count >= entry.repeat_count and entry.escalate is not None:
                action = entry.escalate
        return Verdict(fault, entry, action, action in FATAL_ACTIONS, _reason(fault), count)

    def forget(self, pci: str | None = None) -> None:
        """Drop the repeat windows of the GPU at PCI (in any of its printed forms; all GPUs when None),
        after its reset for example."""
        gpu = pci_id(pci)
        for key in [key for key in self._occurrences if pci is None or pci_id(key[2]) == gpu]:
            del self._occurrences[key]
            self._last_line.pop(key, None)


def _reason(fault: Fault) -> str:
    if fault.kind == "xid":
        return f"Xid{fault.code}"
    if fault.kind == "sxid":
        return f"SXid{fault.code}"
    return "GPUFallenOffBus"


def _read_yaml(text: str, name: str) -> Any:
    import yaml  # python3-yaml; only here, so that parsing alone needs nothing but the standard library

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CatalogError(f"{name}: not valid YAML: {problem}{where}") from None


def _not_allowed(name: str, where: str, what: str, value: Any, allowed: str) -> CatalogError:
    """The one line of a bad value: file, code, key, value, what is allowed."""
    return CatalogError(f"{name}: {where}: {what} {value!r} is not allowed; {allowed}")


def _all(values: Any) -> str:
    return ", ".join(values)


def _one_of(values: Any) -> str:
    return "one of " + _all(values)


def _sections(data: Any, name: str) -> dict[str, dict[Any, dict]]:
    """DATA's sections, each {key: entry}, keys and values checked (entries may be partial here)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _not_allowed(
            name, "top level", type(data).__name__, data, "a mapping of the sections " + _all(_SECTIONS)
        )
    sections: dict[str, dict[Any, dict]] = {}
    for section, body in data.items():
        if section not in _SECTIONS:
            raise _not_allowed(name, "top level", "section", section, _one_of(_SECTIONS))
        if section in ("unknown", "fallen_off_bus"):
            sections[section] = {None: _fields(body, name, section)}
            continue
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise _not_allowed(name, section, "value", body, "a mapping of codes to entries")
        entries: dict[Any, dict] = {}
        for key, entry in body.items():
            if section == "sxid_severity":
                if key not in _SEVERITIES:
                    raise _not_allowed(name, section, "severity", key, _one_of(_SEVERITIES))
                code: Any = key
            else:
                code = _code(key, name, section)
            entries[code] = _fields(entry, name, f"{section} {code}")
        sections[section] = entries
    return sections


def _code(key: Any, name: str, section: str) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise _not_allowed(name, section, "code", key, "a whole number such as 79")
    return key


def _fields(entry: Any, name: str, where: str) -> dict:
    """ENTRY's keys and values, each checked on its own."""
    if not isinstance(entry, dict):
        raise _not_allowed(name, where, "entry", entry, "a mapping with the keys " + _all(_KEYS))
    for key, value in entry.items():
        if key not in _KEYS:
            raise _not_allowed(name, where, "key", key, _one_of(_KEYS))
        if key == "action" and value not in ACTIONS:
            raise _not_allowed(name, where, key, value, _one_of(ACTIONS))
        if key == "description" and (not isinstance(value, str) or "\n" in value):
            raise _not_allowed(name, where, key, value, "one line of text")
        if key == "escalate" and value is not None and value not in FATAL_ACTIONS:
            raise _not_allowed(name, where, key, value, _one_of(_FATAL))
        if key == "repeat":
            _check_repeat(value, name, where)
        if key == "detail_actions":
            _check_detail_actions(value, name, where)
    return dict(entry)


def _check_repeat(repeat: Any, name: str, where: str) -> None:
    if not isinstance(repeat, dict):
        raise _not_allowed(name, where, "repeat", repeat, "a mapping such as {count: 5, window_seconds: 300}")
    for key, value in repeat.items():
        if key not in _REPEAT_KEYS:
            raise _not_allowed(name, where, "repeat key", key, _one_of(_REPEAT_KEYS))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key == "count" and not (number and isinstance(value, int) and value >= 1):
            raise _not_allowed(name, where, "repeat.count", value, "a whole number >= 1 (1: no repeat rule)")
        if key == "window_seconds" and not (number and value > 0):
            raise _not_allowed(name, where, "repeat.window_seconds", value, "a number of seconds > 0")


def _check_detail_actions(detail_actions: Any, name: str, where: str) -> None:
    if not isinstance(detail_actions, dict):
        raise _not_allowed(name, where, "detail_actions", detail_actions, "a mapping of text to action")
    for text, action in detail_actions.items():
        if not isinstance(text, str) or not text:
            raise _not_allowed(name, where, "detail_actions text", text, "a non-empty string")
        if action not in ACTIONS:
            raise _not_allowed(name, where, f"detail_actions {text!r}: action", action, _one_of(ACTIONS))


def _entry(fields: dict, name: str, section: str, key: Any) -> Entry:
    """The Entry of merged FIELDS, which must be whole now; NAME is the file that last changed them."""
    where = section if key is None else f"{section} {key}"
    if "action" not in fields:
        raise CatalogError(f"{name}: {where}: action is missing; {_one_of(ACTIONS)}")
    repeat = fields.get("repeat") or {}
    count = repeat.get("count", 1)
    window = repeat.get("window_seconds")
    escalate = fields.get("escalate")
    if count > 1 and window is None:
        raise CatalogError(
            f"{name}: {where}: repeat.window_seconds is missing; seconds > 0 for count {count}"
        )
    if count > 1 and escalate is None:
        raise CatalogError(
            f"{name}: {where}: escalate is missing; {_one_of(_FATAL)} for repeat count {count}"
        )
    default = {"xid": f"Xid {key}", "sxid": f"SXid {key}"}.get(section, where)
    return Entry(
        action=fields["action"],
        description=fields.get("description") or default,
        repeat_count=count,
        repeat_window=float(window or 0.0),
        escalate=escalate,
        detail_actions=tuple((fields.get("detail_actions") or {}).items()),
    )
