"""`appliance-gpu-health` (python3 -m appliance.health): the entry point of the services on the nodes.

    appliance-gpu-health agent [--config FILE] [--source S] [--node-name N]
    appliance-gpu-health controller [--config FILE] [--dry-run]
    appliance-gpu-health qa [--expected-gpus N]                       (on the node; JSON verdict)
    appliance-gpu-health readmit NODE --qa TEXT [--kubeconfig FILE]   (after the QA check passed)
    appliance-gpu-health approve NODE [--kubeconfig FILE]             (remediation policy manual)
    appliance-gpu-health status [--kubeconfig FILE] [--selector S]
    appliance-gpu-health token --account NAME --out FILE [--seconds N] [--kubeconfig FILE]

Standard library argparse: the nodes have Debian's python3 and python3-yaml, not the CLI's libraries.
Errors are one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from appliance.health.kube import Client, KubeError

ADMIN_CONF = Path("/etc/kubernetes/admin.conf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="appliance-gpu-health", description=__doc__.split("\n", maxsplit=1)[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    agent = commands.add_parser("agent", help="follow the kernel log and nvidia-smi; report on this node")
    agent.add_argument("--config", type=Path)
    agent.add_argument("--source", help="kmsg, journal or file:PATH")
    agent.add_argument("--node-name")
    controller = commands.add_parser("controller", help="isolate GPU nodes whose GPUHealthy is False")
    controller.add_argument("--config", type=Path)
    controller.add_argument("--dry-run", action="store_true", default=None)
    qa = commands.add_parser("qa", help="re-admission's QA check of this node's GPUs (JSON)")
    qa.add_argument("--expected-gpus", type=int, default=0)
    readmit = commands.add_parser("readmit", help="clear a node's GPU fault after its QA check passed")
    readmit.add_argument("node")
    readmit.add_argument("--qa", required=True, help="the QA check's result, kept in the condition")
    readmit.add_argument("--kubeconfig", type=Path, default=ADMIN_CONF)
    approve = commands.add_parser("approve", help="let the controller remediate a node's current fault")
    approve.add_argument("node")
    approve.add_argument("--kubeconfig", type=Path, default=ADMIN_CONF)
    status = commands.add_parser("status", help="every GPU node's condition, last fault and taint (JSON)")
    status.add_argument("--kubeconfig", type=Path, default=ADMIN_CONF)
    status.add_argument("--selector", default="node-role.kubernetes.io/runai-gpu-worker")
    status.add_argument("--table", action="store_true", help="a table for operators instead of JSON")
    token = commands.add_parser(
        "token", help="write a fresh, expiring token of a ServiceAccount (the controller's)"
    )
    token.add_argument("--account", required=True, help="the ServiceAccount, in --namespace")
    token.add_argument("--namespace", default="kube-system")
    token.add_argument("--seconds", type=int, default=86400, help="how long the token lives (600 at least)")
    token.add_argument("--out", type=Path, required=True, help="the file to write it to (0600)")
    token.add_argument("--kubeconfig", type=Path, default=ADMIN_CONF)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "agent":
            from appliance.health import agent as agent_module

            return agent_module.main(args.config, {"source": args.source, "node_name": args.node_name})
        if args.command == "controller":
            from appliance.health import controller as controller_module

            return controller_module.main(args.config, {"dry_run": args.dry_run})
        from appliance.health import operations

        if args.command == "qa":
            print(json.dumps(operations.qa(args.expected_gpus)))
            return 0
        client = Client(args.kubeconfig)
        if args.command == "token":
            from appliance.health.kube import request_token, write_secret_file

            value, expires = request_token(client, args.namespace, args.account, args.seconds)
            write_secret_file(args.out, value + "\n")
            logging.getLogger("appliance.health").info(
                "token of %s/%s written to %s, expires %s", args.namespace, args.account, args.out, expires
            )
            return 0
        if args.command == "readmit":
            result = operations.readmit(client, args.node, args.qa)
        elif args.command == "approve":
            result = operations.approve(client, args.node)
        else:
            result = operations.status(client, args.selector)
            if args.table:
                print("\n".join(operations.status_table(result)))
                return 0
        print(json.dumps(result, indent=2))
        return 0
    except (KubeError, ValueError, OSError) as error:
        print(f"appliance-gpu-health: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
