"""Action plugin clock_skew: how far a node's clock is from the controller's, read over the task's connection.

Its documentation is in plugins/modules/clock_skew.py, where ansible-doc looks for it."""

from __future__ import annotations

import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# The node's clock in seconds since the epoch, with nanoseconds (GNU date).
READ_CLOCK = "date +%s.%N"


def estimate(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """The node's offset from the controller's clock and its uncertainty, from samples (controller time
    before, node time, controller time after): the node read its clock somewhere inside the round trip, so
    the sample with the shortest round trip bounds it best; its middle is the estimate, half its length the
    uncertainty."""
    if not samples:
        raise ValueError("no sample of the node's clock")
    before, node, after = min(samples, key=lambda sample: sample[2] - sample[0])
    return node - (before + after) / 2, (after - before) / 2


def judge(offset: float, uncertainty: float, max_seconds: float) -> bool:
    """Whether the clocks may be within MAX_SECONDS of each other: a node is reported only when even the
    most favourable reading within the uncertainty is farther off."""
    return abs(offset) - uncertainty <= max_seconds


class ActionModule(ActionBase):
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _spec, args = self.validate_argument_spec(
            argument_spec={
                "max_seconds": {"type": "float", "default": 2.0},
                "samples": {"type": "int", "default": 3},
            }
        )
        samples = []
        for _sample in range(max(1, args["samples"])):
            before = time.time()
            answer = self._low_level_execute_command(READ_CLOCK, sudoable=False)
            after = time.time()
            try:
                node = float(answer.get("stdout", "").strip())
            except ValueError:
                raise AnsibleActionFail(
                    f"cannot read the node's clock with `{READ_CLOCK}`: rc={answer.get('rc')} "
                    f"{(answer.get('stderr') or answer.get('stdout') or '').strip()[:200]}"
                ) from None
            samples.append((before, node, after))
        offset, uncertainty = estimate(samples)
        return {
            **result,
            "changed": False,
            "offset": round(offset, 3),
            "uncertainty": round(uncertainty, 3),
            "within": judge(offset, uncertainty, args["max_seconds"]),
        }
