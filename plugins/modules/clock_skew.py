#!/usr/bin/python
"""Documentation of the action plugin clock_skew (plugins/action/clock_skew.py), which does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
module: clock_skew
short_description: How far a node's clock is from the controller's
description:
  - Reads the node's clock (C(date +%s.%N)) over the task's connection a few times, the controller's clock
    just before and after each read, and takes the read with the shortest round trip - the node read its
    clock within it - as the estimate (its middle) and the uncertainty (half its length), as NTP does.
  - Changes nothing; runs in check mode too.
options:
  max_seconds:
    description: The largest difference allowed; RV(within) is false only when the node is farther off even
      at the favourable end of the uncertainty.
    type: float
    default: 2.0
  samples:
    description: How many times the clock is read.
    type: int
    default: 3
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Measure the node's clock against the controller's
  appliance.runai.clock_skew:
    max_seconds: 2
  register: preflight_clock
"""

RETURN = r"""
offset:
  description: Seconds the node's clock is ahead of the controller's (negative - behind).
  type: float
  returned: success
uncertainty:
  description: Half the round trip of the read used, in seconds.
  type: float
  returned: success
within:
  description: Whether the clocks may be within O(max_seconds) of each other.
  type: bool
  returned: success
"""
