"""Playbook runs on ansible-runner's Python API, turned into a live tally per host and a summary.

Every CLI command that changes machines (`run`, and later `bootstrap`, `node`, `health`) goes through
`run_playbook`: one place that resolves the playbook and inventory, builds ansible-runner's arguments,
keeps secrets out of world-readable files and turns ansible's events into a `RunState`.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance import paths
from appliance.errors import UsageError

# Environment passed to ansible besides ANSIBLE_*: what SSH, proxies and locales need, nothing else.
ENV_ALLOW_LIST = (
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "SSH_AUTH_SOCK",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "DOCKER_HOST",
    "KUBECONFIG",
)


@dataclass(frozen=True)
class RunRequest:
    playbook: str
    inventory: str | None = None
    limit: str | None = None
    extra_vars: tuple[str, ...] = ()
    check: bool = False
    diff: bool = False
    verbosity: int = 0


@dataclass
class Secrets:
    """What the global options --vault-id, --ask-vault-pass and --ask-become-pass ask of every run: the
    vault ids go to ansible-playbook as they are, the passwords (asked once, by the CLI) answer its prompts
    through ansible-runner, in memory only."""

    vault_ids: tuple[str, ...] = ()
    vault_password: str | None = None
    become_password: str | None = None

    def cmdline(self) -> list[str]:
        args = [arg for vault_id in self.vault_ids for arg in ("--vault-id", vault_id)]
        args += ["--ask-vault-pass"] * (self.vault_password is not None)
        return args + ["--ask-become-pass"] * (self.become_password is not None)

    def prompts(self) -> dict[str, str]:
        answers = {}
        if self.vault_password is not None:
            answers[r"^Vault password.*:\s*?$"] = self.vault_password
        if self.become_password is not None:
            answers[r"^BECOME password.*:\s*?$"] = self.become_password
        return answers


SECRETS = Secrets()  # set once by the CLI's global options


@dataclass
class HostTally:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    task: str = ""


@dataclass(frozen=True)
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False


@dataclass
class RunState:
    playbook: str
    inventory: str
    started: float = field(default_factory=time.monotonic)
    play: str = ""
    task: str = ""
    hosts: dict[str, HostTally] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    finished: bool = False
    status: str = "starting"
    rc: int | None = None
    log: str = ""
    # Lines a playbook reports for the operator: the `appliance_report` of its debug tasks.
    report: list[str] = field(default_factory=list)
    # What a playbook gives `--json` beside its lines: the `appliance_data` mappings of its debug tasks.
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def interrupted(self) -> bool:
        return self.status == "canceled"

    @property
    def succeeded(self) -> bool:
        return self.rc == 0 and not any(t.failed or t.unreachable for t in self.hosts.values())

    def host(self, name: str) -> HostTally:
        return self.hosts.setdefault(name, HostTally())

    def summary(self) -> dict[str, Any]:
        """The machine-readable result printed by `--json`."""
        return {
            "playbook": self.playbook,
            "inventory": self.inventory,
            "status": self.status,
            "rc": self.rc,
            "succeeded": self.succeeded,
            "elapsed_seconds": round(self.elapsed, 2),
            "hosts": {
                name: {k: v for k, v in asdict(t).items() if k != "task"} for name, t in self.hosts.items()
            },
            "failures": [asdict(f) for f in self.failures],
            "report": self.report,
            "data": self.data,
            "log": self.log,
        }


def resolve_playbook(name: str, project: Path) -> Path:
    """NAME as a path, else under the project (`site.yml`), else under playbooks/ (`maintenance/drain`)."""
    candidates = [Path(name), project / name, project / "playbooks" / name]
    if not name.endswith((".yml", ".yaml")):
        candidates += [project / "playbooks" / f"{name}.yml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise UsageError(
        f"unknown playbook {name!r}: no such file here, in {project} or in {project / 'playbooks'}"
    )


def configured_inventory(project: Path) -> tuple[str, Path] | None:
    """The inventory Ansible itself would take when -i is not given: $ANSIBLE_INVENTORY, else `inventory`
    in [defaults] of the ansible.cfg in effect ($ANSIBLE_CONFIG, else the project's), relative to that file.
    (name as given, the directory it is relative to), or None."""
    from_env = os.environ.get("ANSIBLE_INVENTORY", "").strip()
    if from_env:
        return from_env, Path.cwd()
    config = Path(os.environ.get("ANSIBLE_CONFIG") or project / "ansible.cfg")
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read(config)
    except configparser.Error as error:
        raise UsageError(f"{config}: {error}") from None
    value = parser.get("defaults", "inventory", fallback="").strip()
    return (os.path.expanduser(value), config.parent) if value else None


def resolve_inventory(name: str | None, project: Path) -> Path:
    """The inventory given with -i; else Ansible's own ($ANSIBLE_INVENTORY, ansible.cfg's); else the lab's
    when a lab is up. One source: a directory holds several."""
    base = Path.cwd()
    if name is None and (configured := configured_inventory(project)) is not None:
        name, base = configured
    if name is None:
        lab = project / "inventories" / os.environ.get("APPLIANCE_LAB_NAME", "lab") / "hosts.yml"
        if lab.is_file():
            return lab
        raise UsageError(
            "no inventory given (-i INVENTORY, ANSIBLE_INVENTORY or ansible.cfg's inventory) and no lab "
            "inventory (run `appliance lab up`)"
        )
    if "," in name:
        raise UsageError(f"inventory {name!r}: give one source (a directory can hold several)")
    path = base / name
    if not path.exists() and (project / name).exists():
        path = project / name
    if not path.exists():
        raise UsageError(f"inventory {name!r} does not exist")
    return path.resolve()


def parse_extra_var(text: str) -> str:
    """Accept what ansible's -e accepts (KEY=VALUE, JSON/YAML, @FILE); refuse the obviously malformed."""
    if text.startswith("@"):
        if not Path(text[1:]).is_file():
            raise UsageError(f"-e {text}: no such file {text[1:]!r}")
        return text
    first_word = text.split()[0] if text.split() else ""
    if text.lstrip().startswith("{") or first_word.find("=") > 0:
        return text
    raise UsageError(f"-e {text!r}: expected KEY=VALUE, a JSON/YAML mapping or @FILE")


def _environment(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_") or k in ENV_ALLOW_LIST}
    # ansible-playbook must be the one installed beside this interpreter, even when the venv isn't active.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env.setdefault("ANSIBLE_CONFIG", str(project / "ansible.cfg"))
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


class EventTally:
    """Folds ansible-runner events into a RunState; `playbook_on_stats` has the final word on counts."""

    def __init__(self, state: RunState, on_update: Callable[[RunState], None]) -> None:
        self.state = state
        self.on_update = on_update

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host = data.get("host") or data.get("remote_addr")
        task = data.get("task", "")
        state = self.state
        if kind == "playbook_on_play_start":
            state.play = data.get("play", "")
        elif kind == "playbook_on_task_start":
            state.task = task
        elif kind == "runner_on_start" and host:
            state.host(host).task = task
        elif kind == "runner_on_ok" and host:
            tally = state.host(host)
            tally.ok += 1
            tally.changed += bool(data.get("res", {}).get("changed"))
            report = data.get("res", {}).get("appliance_report")
            if isinstance(report, list):
                state.report.extend(str(line) for line in report)
            elif report:
                state.report.append(str(report))
            data_part = data.get("res", {}).get("appliance_data")
            if isinstance(data_part, dict):
                state.data.update(data_part)
        elif kind == "runner_on_skipped" and host:
            state.host(host).skipped += 1
        elif kind == "runner_on_failed" and host:
            tally = state.host(host)
            if data.get("ignore_errors"):
                tally.ignored += 1
            else:
                tally.failed += 1
                state.failures.append(Failure(host, task, _result_message(data.get("res", {}))))
        elif kind == "runner_on_unreachable" and host:
            state.host(host).unreachable += 1
            state.failures.append(Failure(host, task, _result_message(data.get("res", {})), unreachable=True))
        elif kind == "playbook_on_stats":
            self._final_counts(data)
        self.on_update(state)
        return True  # kept in the run's artifacts (job_events/), for inspection after the run

    def _final_counts(self, data: dict[str, Any]) -> None:
        names = {
            "ok": "ok",
            "changed": "changed",
            "failures": "failed",
            "dark": "unreachable",
            "skipped": "skipped",
            "rescued": "rescued",
            "ignored": "ignored",
        }
        seen = set().union(*(data.get(key) or {} for key in names))
        for host in seen:
            tally = self.state.host(host)
            for key, attribute in names.items():
                setattr(tally, attribute, (data.get(key) or {}).get(host, 0))


def _result_message(result: dict[str, Any]) -> str:
    for key in ("msg", "stderr", "stdout", "reason"):
        value = result.get(key)
        if value:
            text = str(value).strip()
            return text if len(text) < 8000 else text[:8000] + " ..."
    return "failed (no message)"


def run_playbook(request: RunRequest, on_update: Callable[[RunState], None] = lambda _: None) -> RunState:
    """Run REQUEST's playbook; bad input raises UsageError before anything runs."""
    import ansible_runner  # slow to import: only when a playbook really runs

    project = paths.project_root()
    playbook = resolve_playbook(request.playbook, project)
    inventory = resolve_inventory(request.inventory, project)
    extra_vars = [parse_extra_var(value) for value in request.extra_vars]
    cmdline = [arg for value in extra_vars for arg in ("-e", value)]
    cmdline += ["--check"] * request.check + ["--diff"] * request.diff
    cmdline += SECRETS.cmdline()
    state = RunState(playbook=str(playbook), inventory=str(inventory))
    runs = runs_dir()
    prune_runs(runs, keep_days())
    ident = f"{time.strftime('%Y%m%dT%H%M%S')}-{playbook.stem}-{secrets.token_hex(2)}"
    state.log = str(runs / ident / "stdout")
    private = Path(tempfile.mkdtemp(prefix="appliance-run-"))  # mode 0700: runner writes env and args here
    interrupted = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        result = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(project),
            playbook=str(playbook),
            inventory=str(inventory),
            limit=request.limit,
            cmdline=shlex.join(cmdline) if cmdline else None,
            verbosity=request.verbosity or None,
            envvars=_environment(project),
            event_handler=EventTally(state, on_update),
            status_handler=lambda status, **_: _set_status(state, status["status"], on_update),
            # Ctrl-C stops ansible-playbook through the runner, so no orphan is left behind.
            cancel_callback=interrupted.is_set,
            quiet=True,
            suppress_env_files=True,
            passwords=SECRETS.prompts() or None,
            artifact_dir=str(runs),
            ident=ident,
        )
        state.rc = result.rc
        state.status = result.status
    finally:
        _scrub_command(runs / ident / "command")
        signal.signal(signal.SIGINT, previous_handler)
        shutil.rmtree(private, ignore_errors=True)
    state.finished = True
    on_update(state)
    return state


def _set_status(state: RunState, status: str, on_update: Callable[[RunState], None]) -> None:
    state.status = status
    on_update(state)


def runs_dir() -> Path:
    """Where each run's artifacts are kept, readable by their owner only: RUNS/<time>-<playbook>-<id>/ with
    ansible's output (stdout), its events (job_events/*.json), rc, status and the command (scrubbed)."""
    runs = paths.state_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    runs.chmod(0o700)
    return runs


def keep_days() -> float:
    """How long runs are kept: $APPLIANCE_RUNS_KEEP_DAYS, 30 days by default."""
    text = os.environ.get("APPLIANCE_RUNS_KEEP_DAYS", "30")
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"APPLIANCE_RUNS_KEEP_DAYS={text!r}: expected a number of days") from None


def prune_runs(runs: Path, days: float, now: float | None = None, most: int = 300) -> list[Path]:
    """Remove the runs (and older runs' single .log files) last written more than DAYS ago, and the oldest
    beyond the MOST newest (a test suite runs hundreds); return them."""
    cutoff = (now if now is not None else time.time()) - days * 86400
    entries = []
    for entry in runs.iterdir():
        try:
            entries.append((entry.lstat().st_mtime, entry))
        except FileNotFoundError:
            continue
    entries.sort(reverse=True)
    removed = []
    for position, (written, entry) in enumerate(entries):
        if written >= cutoff and position < most:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# Extra variables whose value is kept out of a run's recorded command.
SECRET_NAME = re.compile(r"pass|secret|token|key|credential|vault", re.IGNORECASE)


def scrub_extra_var(extra: str) -> str:
    """An -e value with the values of secret-looking variables replaced (KEY=VALUE text or a JSON mapping);
    a YAML form it does not read is replaced whole."""
    if extra.startswith("@"):
        return extra
    try:
        data = json.loads(extra)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return json.dumps({k: "REDACTED" if SECRET_NAME.search(k) else v for k, v in data.items()})
    if extra.lstrip().startswith("{"):
        return "REDACTED"
    try:
        words = shlex.split(extra)
    except ValueError:
        return "REDACTED"
    pairs = (word.partition("=") for word in words)
    return shlex.join(f"{k}=REDACTED" if SECRET_NAME.search(k) else f"{k}={v}" for k, _, v in pairs)


def _scrub_command(path: Path) -> None:
    """Keep of ansible-runner's recorded command what replays the run, and nothing secret: the arguments, the
    values of secret-looking -e variables redacted, and the working directory; not the environment."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return
    argv = list(recorded.get("command") or [])
    for position, argument in enumerate(argv[:-1]):
        if argument in ("-e", "--extra-vars"):
            argv[position + 1] = scrub_extra_var(argv[position + 1])
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"command": argv, "cwd": recorded.get("cwd")}, handle, indent=2)
