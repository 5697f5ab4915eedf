"""What the operator sees while a playbook runs and after: a live table per host, then a recap."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from appliance.runner import RunState

COUNTS = ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
LIVE_COUNTS = COUNTS[:5]  # the live view leaves room for the current task
STYLES = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red", "skipped": "cyan"}


def host_table(state: RunState, *, with_task: bool) -> Table:
    counts = LIVE_COUNTS if with_task else COUNTS
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("host", no_wrap=True, min_width=max((len(h) for h in state.hosts), default=4))
    for count in counts:
        table.add_column(count, justify="right", no_wrap=True, min_width=len(count))
    if with_task:
        table.add_column("current task", overflow="ellipsis", no_wrap=True, ratio=1)
    for name, tally in sorted(state.hosts.items()):
        cells = [
            Text(str(getattr(tally, count)), style=STYLES.get(count, "") if getattr(tally, count) else "dim")
            for count in counts
        ]
        row: list[str | Text] = [Text(name, style="red" if tally.failed or tally.unreachable else ""), *cells]
        if with_task:
            row.append(tally.task)
        table.add_row(*row)
    return table


def _header(state: RunState) -> Text:
    header = Text.assemble(
        (Path(state.playbook).name, "bold"),
        "  ",
        (f"{state.elapsed:6.1f}s", "cyan"),
        "  ",
        (f"play: {state.play}" if state.play else state.status, "dim"),
    )
    header.no_wrap = True
    header.overflow = "ellipsis"
    return header


class LiveView:
    """A live table on a terminal; on anything else, one line per task so logs stay readable."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.state: RunState | None = None
        self.live: Live | None = None
        self.lock = threading.Lock()
        self.last_task = ""

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self.live = Live(
                console=self.console, refresh_per_second=4, get_renderable=self._render, transient=True
            )
            self.live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live is not None:
            self.live.__exit__(kind, error, tb)

    def update(self, state: RunState) -> None:
        with self.lock:
            self.state = state
            if self.live is None and state.task and state.task != self.last_task:
                self.last_task = state.task
                self.console.print(
                    f"[{state.elapsed:7.1f}s] TASK {state.task}", highlight=False, soft_wrap=True
                )

    def _render(self) -> Group | Text:
        with self.lock:
            if self.state is None:
                return Text("starting ansible ...")
            return Group(_header(self.state), host_table(self.state, with_task=True))


def print_recap(console: Console, state: RunState) -> None:
    console.print(host_table(state, with_task=False))
    for line in state.report:
        console.print(Text(line), soft_wrap=True, highlight=False)
    for failure in state.failures:
        what = "UNREACHABLE" if failure.unreachable else "FAILED"
        console.print(
            Text.assemble(
                (f"{what} ", "bold red"),
                (failure.host, "bold"),
                f"  task: {failure.task}\n    ",
                failure.message.replace("\n", "\n    "),
            ),
        )
    if state.interrupted:
        verdict = ("interrupted", "bold red")
    else:
        verdict = ("succeeded", "green") if state.succeeded else ("failed", "bold red")
    console.print(
        Text.assemble(
            "playbook ", (verdict[0], verdict[1]), f" in {state.elapsed:.1f}s; full log: {state.log}"
        ),
        highlight=False,
        soft_wrap=True,
    )
