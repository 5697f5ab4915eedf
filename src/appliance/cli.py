"""`appliance`: the command line over ansible-runner and the lab.

Exit codes: 0 success, 1 a host or step failed, 2 bad usage (one line, no traceback; --debug shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from appliance import display, paths, runner
from appliance.bundle import manifest
from appliance.errors import ApplianceError, UsageError
from appliance.lab import image, lab, nodes

EPILOG = """\b
Examples:
  appliance bootstrap -i hosts.yml          fresh machines to an appliance
  appliance bootstrap -i hosts.yml --check  what a run would change
  appliance node drain worker-1             worker-1's pods moved off
  appliance health status --json            every GPU node's health
  appliance bundle verify /media/bundle     a bundle checked before use
\b
Exit codes (ansible-playbook's own in brackets):
  0    every host succeeded (0)
  1    a task failed or a host was unreachable (2, 3, 4), or an
       error stopped the run (1, 250): one line names it
  2    usage: a bad option, playbook, node name or -e value (2, as
       argparse); nothing ran
  130  interrupted with Ctrl-C, ansible-playbook stopped (99)
"""

app = typer.Typer(
    help="Provision and maintain air-gapped GPU Kubernetes appliances running Run:ai.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh and fish
)
lab_app = typer.Typer(
    help="The lab: systemd containers standing in for an appliance's machines.", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")
bundle_app = typer.Typer(help="The offline bundle: build it, verify it.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
node_app = typer.Typer(
    help="Maintenance of one node at a time: drain, restore, down, remove, rejoin; status of all.",
    no_args_is_help=True,
)
app.add_typer(node_app, name="node")
health_app = typer.Typer(
    help="GPU node health: parse kernel logs for Xid faults, show and re-admit isolated GPU nodes.",
    no_args_is_help=True,
)
app.add_typer(health_app, name="health")
certs_app = typer.Typer(
    help="The appliance's certificates: their expiry on every node, and the renewal of kubeadm's.",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")
backup_app = typer.Typer(
    help="Backups of the control plane: take one now (--out DIR: also a copy here), list them, verify one.",
)
app.add_typer(backup_app, name="backup")

console = Console()
errors = Console(stderr=True)

# Options shared by the commands that run a playbook.
InventoryOption = Annotated[
    str | None, typer.Option("-i", "--inventory", help="Inventory (default: the lab's).")
]
ExtraVarsOption = Annotated[
    list[str] | None, typer.Option("-e", "--extra-vars", help="VAR=VALUE, YAML/JSON or @FILE; repeatable.")
]
CheckOption = Annotated[bool, typer.Option("--check", help="Report what would change; change nothing.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the live view.")]


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    python = ".".join(str(part) for part in sys.version_info[:3])
    print(
        f"appliance {of('appliance')} (ansible-core {of('ansible-core')}, ansible-runner "
        f"{of('ansible-runner')}, Python {python})"
    )
    raise typer.Exit(0)


def _ask(what: str) -> str:
    """A password from the terminal (not echoed), or the first line of standard input where there is none."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ")
    return sys.stdin.readline().rstrip("\n")


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    vault_id: Annotated[
        list[str] | None,
        typer.Option(
            "--vault-id", help="A vault identity, as ansible-playbook takes it, for every run; repeatable."
        ),
    ] = None,
    ask_vault_pass: Annotated[
        bool, typer.Option("--ask-vault-pass", "-J", help="Ask for the vault password once, for every run.")
    ] = False,
    ask_become_pass: Annotated[
        bool, typer.Option("--ask-become-pass", "-K", help="Ask for the become (sudo) password once.")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the versions and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Global options; --debug is read by main() before any command runs."""
    runner.SECRETS = runner.Secrets(
        vault_ids=tuple(vault_id or ()),
        vault_password=_ask("Vault password") if ask_vault_pass else None,
        become_password=_ask("BECOME password") if ask_become_pass else None,
    )


@app.command()
def run(
    playbook: Annotated[
        str, typer.Argument(help="Playbook file, or a name under playbooks/ (maintenance/drain).")
    ],
    inventory: InventoryOption = None,
    limit: Annotated[
        str | None, typer.Option("-l", "--limit", help="Limit to these hosts or groups.")
    ] = None,
    extra_vars: ExtraVarsOption = None,
    check: CheckOption = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the changes made to files.")] = False,
    as_json: JsonOption = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="Ansible verbosity (-vvv).")
    ] = 0,
) -> None:
    """Run a playbook with a live view per host and a recap; exit 1 when a host failed."""
    request = runner.RunRequest(
        playbook=playbook,
        inventory=inventory,
        limit=limit,
        extra_vars=tuple(extra_vars or ()),
        check=check,
        diff=diff,
        verbosity=verbose,
    )
    raise typer.Exit(execute(request, as_json=as_json))


@app.command()
def bootstrap(
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Turn fresh machines into a working appliance (site.yml); a re-run changes nothing."""
    request = runner.RunRequest(
        playbook="site.yml", inventory=inventory, extra_vars=tuple(extra_vars or ()), check=check
    )
    raise typer.Exit(execute(request, as_json=as_json))


def execute(request: runner.RunRequest, *, as_json: bool) -> int:
    """Run REQUEST with the live view (or silently for --json); return the exit code. Shared by commands."""
    if as_json:
        state = runner.run_playbook(request)
        print(json.dumps(state.summary(), indent=2))
    else:
        with display.LiveView(console) as view:
            state = runner.run_playbook(request, view.update)
        display.print_recap(console, state)
    if state.interrupted:
        errors.print(f"appliance: interrupted; ansible-playbook stopped. Log: {state.log}", soft_wrap=True)
        return 130
    if state.rc not in (0, None) and not state.hosts:
        # ansible stopped before any host ran: a syntax error, an undefined variable in the play header...
        raise ApplianceError(f"ansible-playbook exited {state.rc} before running any task; see {state.log}")
    return 0 if state.succeeded else 1


# Options of the node commands; each runs a playbook under playbooks/maintenance/ with -e maintenance_*.
NodeArgument = Annotated[str, typer.Argument(help="The node, by its inventory (and Kubernetes) name.")]
TimeoutOption = Annotated[
    int, typer.Option("--timeout", min=1, help="Seconds the drain may take, pods' termination included.")
]


# A Kubernetes node name: a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', at most 253).
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_node_name(node: str) -> str:
    """NODE when it is a Kubernetes node name; a usage error (exit 2) otherwise, before anything runs."""
    if len(node) > 253 or not NODE_NAME.fullmatch(node):
        raise UsageError(
            f"{node!r} is not a node name (lower-case letters, digits, '-' and '.': a Kubernetes node's name)"
        )
    return node


def _node_request(
    playbook: str,
    node: str | None,
    inventory: str | None,
    *,
    check: bool = False,
    limit: str | None = None,
    **options: object,
) -> runner.RunRequest:
    # One JSON mapping: the node's name reaches Ansible as data, never parsed as KEY=VALUE text.
    values = {"maintenance_node": check_node_name(node)} if node is not None else {}
    values.update({f"maintenance_{name}": value for name, value in options.items()})
    extra = [json.dumps(values)] if values else []
    return runner.RunRequest(
        playbook=f"maintenance/{playbook}",
        inventory=inventory,
        limit=limit,
        extra_vars=tuple(extra),
        check=check,
    )


@app.command()
def top(
    inventory: InventoryOption = None,
    group: Annotated[str, typer.Option("--group", help="The inventory group to read.")] = "gpu_workers",
    limit: Annotated[
        str | None, typer.Option("-l", "--limit", help="Further limit to these hosts or groups (a pattern).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document: cluster, nodes, gpus, errors.")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option("--watch", min=1, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds each node has to answer.")] = 15,
) -> None:
    """GPU utilisation and memory per node and per GPU (nvidia-smi over SSH), like Run:ai's rntop.

    Exit 1 when a node could not be read: unreachable, no nvidia-smi, or nvidia-smi failed."""
    from appliance.health import top as gpu_top

    project = paths.project_root()
    hosts = gpu_top.inventory_hosts(
        runner.resolve_inventory(inventory, project),
        group=group,
        limit=limit,
        ansible_config=project / "ansible.cfg",
    )
    raise typer.Exit(gpu_top.show(hosts, as_json=as_json, watch=watch, timeout=timeout))


@node_app.command("drain")
def node_drain(
    node: NodeArgument,
    evict: Annotated[
        bool,
        typer.Option("--evict", help="Also cordon and evict via the Eviction API (PodDisruptionBudgets)."),
    ] = False,
    timeout: TimeoutOption = 300,
    force: Annotated[
        bool,
        typer.Option("--force", help="Drain the last control-plane/Run:ai system node; delete bare pods."),
    ] = False,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Planned maintenance: taint runai=drain:NoExecute and wait until the node's workloads moved."""
    request = _node_request("drain", node, inventory, check=check, evict=evict, timeout=timeout, force=force)
    raise typer.Exit(execute(request, as_json=as_json))


@node_app.command("restore")
def node_restore(
    node: NodeArgument,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """After maintenance: remove the taint; the node gets back the cordon state it had before the drain."""
    raise typer.Exit(execute(_node_request("restore", node, inventory, check=check), as_json=as_json))


@node_app.command("down")
def node_down(
    node: NodeArgument,
    force: Annotated[bool, typer.Option("--force", help="Also for a node that is still Ready.")] = False,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Unplanned downtime: move an unreachable node's workloads now, not after 5 minutes."""
    raise typer.Exit(
        execute(_node_request("down", node, inventory, check=check, force=force), as_json=as_json)
    )


@node_app.command("remove")
def node_remove(
    node: NodeArgument,
    timeout: TimeoutOption = 300,
    force: Annotated[
        bool, typer.Option("--force", help="Remove the node even when its drain fails.")
    ] = False,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Permanent removal of a worker: drain (evicting), delete from the cluster, kubeadm reset on it."""
    request = _node_request("remove", node, inventory, check=check, timeout=timeout, force=force)
    raise typer.Exit(execute(request, as_json=as_json))


@node_app.command("rejoin")
def node_rejoin(
    node: NodeArgument,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Join a worker again: reset stale state, fresh join token, Ready, roles from the inventory."""
    request = _node_request("rejoin", node, inventory, check=check, limit=f"{node},control_plane")
    raise typer.Exit(execute(request, as_json=as_json))


@node_app.command("status")
def node_status(inventory: InventoryOption = None, as_json: JsonOption = False) -> None:
    """Every node: readiness, in service / cordoned / drained, pods, roles, taints."""
    raise typer.Exit(execute(_node_request("status", None, inventory), as_json=as_json))


@health_app.command("parse")
def health_parse(
    file: Annotated[
        str, typer.Argument(help="Kernel log (dmesg, journalctl -k, /dev/kmsg records); - is stdin.")
    ] = "-",
    catalog_override: Annotated[
        Path | None,
        typer.Option("--catalog-override", help="Xid catalog overrides: a YAML file of the catalog's shape."),
    ] = None,
) -> None:
    """Print each GPU fault (Xid, SXid, fallen off the bus) as a JSON line with the catalog's action.

    Prints each fault as it arrives: journalctl -k -f | appliance health parse

    Repeat windows count in the log's own time where its lines carry one; exit 0 with or without faults.
    """
    import contextlib
    import time

    from appliance.health.catalog import Assessor, Catalog, CatalogError
    from appliance.health.xid import parse_lines, timestamp

    try:
        assessor = Assessor(Catalog.load(catalog_override))
    except CatalogError as error:
        raise UsageError(str(error)) from None
    if file == "-":
        sys.stdin.reconfigure(errors="replace")  # a kernel log may hold any bytes
        source: contextlib.AbstractContextManager = contextlib.nullcontext(sys.stdin)
    else:
        try:
            source = open(file, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the with below
        except OSError as error:
            raise UsageError(f"cannot read {file}: {error.strerror}") from None
    try:
        with source as lines:
            for fault in parse_lines(lines):
                seen = timestamp(fault.line)
                verdict = assessor.assess(fault, time.monotonic() if seen is None else seen)
                record = {
                    "kind": fault.kind,
                    "code": fault.code,
                    "pci": fault.pci,
                    "pid": fault.pid,
                    "process": fault.process,
                    "severity": fault.severity,
                    "action": verdict.action,
                    "fatal": verdict.fatal,
                    "reason": verdict.reason,
                    "count": verdict.count,
                    "description": verdict.entry.description,
                    "line": fault.line,
                }
                print(json.dumps(record), flush=True)
    except BrokenPipeError:  # the reader left (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@lab_app.command("up")
def lab_up(
    workers: Annotated[int, typer.Option("--workers", "-w", help="Number of worker nodes.")] = 2,
    runai_tarball: Annotated[
        Path | None,
        typer.Option(
            "--runai-tarball",
            help="A Run:ai air-gapped tarball: the inventory then installs Run:ai from it "
            "(lab domain, generated certificate and admin password).",
        ),
    ] = None,
) -> None:
    """Create (or reuse) cp-1 and N workers, reachable over SSH; write inventories/lab/hosts.yml."""
    planned = lab.up(
        workers,
        log=lambda line: console.print(f"lab: {line}", highlight=False),
        runai_tarball=runai_tarball,
    )
    files = lab.LabFiles.of(nodes.LabId.from_environment())
    console.print(f"lab: {len(planned)} nodes up; inventory {files.inventory}", highlight=False)


@lab_app.command("status")
def lab_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every lab node with its container and systemd state."""
    rows = lab.status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("lab: no nodes (appliance lab up)")
        return
    table = Table(box=None, header_style="bold")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@lab_app.command("exec", context_settings={"allow_interspersed_args": False})
def lab_exec(
    node: Annotated[str, typer.Argument(help="Lab node name, for example worker-1.")],
    command: Annotated[list[str] | None, typer.Argument(help="The command, after --.")] = None,
) -> None:
    """Run COMMAND on NODE as root: appliance lab exec worker-1 -- systemctl is-system-running."""
    arguments = lab.exec_arguments(
        node, command or [], interactive=sys.stdin.isatty() and sys.stdout.isatty()
    )
    docker_binary = shutil.which("docker") or "docker"
    sys.stdout.flush()
    os.execv(docker_binary, [docker_binary, *arguments])


@lab_app.command("down")
def lab_down() -> None:
    """Remove the lab's containers, their volumes and the lab network, and nothing else."""
    lab.down(log=lambda line: console.print(f"lab: {line}", highlight=False))


@lab_app.command("image")
def lab_image() -> None:
    """Build the node image when its recipe changed; print its tag."""
    print(image.ensure_image(log=lambda line: errors.print(f"lab: {line}", highlight=False)))


@lab_app.command("kubeconfig")
def lab_kubeconfig() -> None:
    """Print the path of an admin kubeconfig for the lab's cluster, usable from this machine."""
    print(lab.kubeconfig())


@lab_app.command("bundle")
def lab_bundle(
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="Add a site image, as `bundle build --image` does (repeatable)."),
    ] = None,
) -> None:
    """Build (or refresh from the cache) the bundle the lab serves, where its inventory points."""
    _build_bundle(paths.lab_bundle_dir(), "build", extra_images=image or [])


@lab_app.command("runai-tarball")
def lab_runai_tarball(
    version: Annotated[str, typer.Option("--version", help="The Run:ai version it stands in for.")] = "2.9.0",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Directory to write it to (default: ~/.local/state/appliance/runai)."
        ),
    ] = None,
) -> None:
    """Build a SYNTHETIC Run:ai air-gapped tarball (Run:ai's layout, test stand-ins); print its path."""
    from appliance.lab import runai_tarball  # needs go and docker only when building

    directory = out or runai_tarball.default_out_dir()
    print(
        runai_tarball.build(
            version,
            directory,
            log=lambda line: errors.print(f"runai-tarball: {line}", highlight=False, soft_wrap=True),
        )
    )


@bundle_app.command("build")
def bundle_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the bundle to.")],
    source: Annotated[
        str,
        typer.Option(
            "--source", help="Where artifacts come from: build (from source) or upstream (downloaded)."
        ),
    ] = "build",
    versions_file: Annotated[
        Path | None, typer.Option("--versions", help="A versions file instead of the project's versions.yml.")
    ] = None,
    mirror: Annotated[
        list[str] | None,
        typer.Option(
            "--mirror",
            help="Fetch from a mirror (--source upstream, and site images): URL-PREFIX=URL-PREFIX or "
            "REGISTRY=[http://]HOST.",
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="Add an image the site's workloads use, by the name pods give it (repeatable): REF, copied "
            "from its registry, or REF=SOURCE, a skopeo source such as docker-daemon:NAME:TAG.",
        ),
    ] = None,
    execution_environment: Annotated[
        bool,
        typer.Option(
            "--execution-environment/--no-execution-environment",
            help="Build the execution environment's image into controller/ (needs ansible-builder).",
        ),
    ] = True,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            help="Sign the apt repository with this OpenPGP secret key file (unprotected) instead of the "
            "key this machine generated (~/.local/state/appliance/bundle-signing/).",
        ),
    ] = None,
) -> None:
    """Build the offline bundle: binaries, apt repository, images, charts, manifests, the controller."""
    from appliance.bundle import upstream

    if mirror and source != "upstream" and not image:
        raise UsageError("--mirror applies to --source upstream and to site images (--image)")
    _build_bundle(
        out,
        source,
        versions_file,
        upstream.parse_mirrors(mirror or []),
        image or [],
        execution_environment,
        signing_key,
    )


def _build_bundle(
    out: Path,
    source: str,
    versions_file: Path | None = None,
    mirrors: dict[str, str] | None = None,
    extra_images: list[str] | None = None,
    execution_environment: bool = True,
    signing_key: Path | None = None,
) -> None:
    from appliance.bundle import build  # imports the builders only when building

    result = build.build_bundle(
        out,
        source,
        log=lambda line: console.print(f"bundle: {line}", highlight=False),
        versions_path=versions_file,
        mirrors=mirrors,
        extra_images=extra_images,
        execution_environment=execution_environment,
        signing_key=signing_key,
    )
    size = result.size / 2**20
    console.print(
        f"bundle {result.out}: {result.files} files, {size:.0f} MiB, built in {result.seconds:.0f} s\n"
        f"manifest sha256 {result.manifest_sha256} (carry it to the site: bundle verify --manifest-sha256)",
        highlight=False,
        soft_wrap=True,
    )


@bundle_app.command("verify")
def bundle_verify(
    directory: Annotated[Path, typer.Argument(help="The bundle directory (holding manifest.json).")],
    manifest_sha256: Annotated[
        str | None,
        typer.Option("--manifest-sha256", help="The manifest's sha256 that `bundle build` printed."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Check every file of a bundle against its manifest; name each missing, altered or extra file."""
    verdict = manifest.verify(directory, manifest_sha256)
    if as_json:
        print(json.dumps({**asdict(verdict), "ok": verdict.ok}, indent=2))
    if not verdict.ok:
        raise ApplianceError(f"bundle {directory} failed verification: {verdict.problems()}")
    if not as_json:
        checked, digest = verdict.checked, verdict.manifest_sha256
        console.print(
            f"bundle {directory}: {checked} files verified; manifest sha256 {digest}",
            highlight=False,
            soft_wrap=True,
        )


@health_app.command("readmit")
def health_readmit(
    node: NodeArgument,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """After repair: a QA check on NODE (nvidia-smi, dcgmi diag -r 1 where installed); when it passes, clear
    GPUHealthy=False and the fault taint. A cordon an admin set stays."""
    request = _node_request("gpu_readmit", node, inventory, check=check, limit=f"{node},control_plane")
    raise typer.Exit(execute(request, as_json=as_json))


@health_app.command("approve")
def health_approve(
    node: NodeArgument,
    inventory: InventoryOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """With gpu_health_remediation: manual, let the controller remediate NODE's current fault (drain,
    reboot or GPU reset, QA, re-admission). A later fault waits for its own approval."""
    request = _node_request("gpu_approve", node, inventory, check=check, limit=f"{node},control_plane")
    raise typer.Exit(execute(request, as_json=as_json))


@health_app.command("status")
def health_status(inventory: InventoryOption = None, as_json: JsonOption = False) -> None:
    """Every GPU node: GPUHealthy, the last fault, the fault taint, the cordon; the circuit breaker."""
    raise typer.Exit(execute(_node_request("gpu_status", None, inventory), as_json=as_json))


@certs_app.command("status")
def certs_status(
    warn_days: Annotated[
        int,
        typer.Option("--warn-days", min=0, help="Exit 1 naming the certificates that expire within N days."),
    ] = 30,
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every certificate the appliance runs on (kubeadm's, the kubeconfigs', the kubelets', the CAs, Run:ai's)
    with subject, issuer, not-after and days left, and each control-plane node's last renewal."""
    extra = (f"certs_warn_days={warn_days}", *(extra_vars or ()))
    request = runner.RunRequest(playbook="certs_status.yml", inventory=inventory, extra_vars=extra)
    raise typer.Exit(execute(request, as_json=as_json))


@certs_app.command("renew")
def certs_renew(
    force: Annotated[
        bool, typer.Option("--force", help="Renew every kubeadm certificate, not only those that are due.")
    ] = False,
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Renew the kubeadm certificates that expire within certs_renew_before_days (90), one control-plane node
    at a time: kubeadm certs renew, each component restarted and waited on, admin kubeconfigs refreshed.
    CAs are never renewed. Nothing due: nothing changes."""
    extra = (f"certs_renew_force={json.dumps(force)}", *(extra_vars or ()))
    request = runner.RunRequest(playbook="certs.yml", inventory=inventory, extra_vars=extra, check=check)
    raise typer.Exit(execute(request, as_json=as_json))


OutOption = Annotated[
    Path | None,
    typer.Option("--out", help="A directory on this machine that gets a copy of the archive (0600)."),
]


@backup_app.callback(invoke_without_command=True)
def backup(
    ctx: typer.Context,
    out: OutOption = None,
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Take a backup now on the first control-plane node: an etcd snapshot, the PKI, the kubeadm and kubelet
    configuration, every Helm release's values and the Run:ai database, in one archive encrypted with
    backup_passphrase (Vault); the newest backup_keep are kept. Before maintenance, run this."""
    if ctx.invoked_subcommand is not None:
        if out is not None or inventory is not None or extra_vars or check or as_json:
            raise UsageError(f"put the options after `backup {ctx.invoked_subcommand}`")
        return
    extra = (*_out_vars(out), *(extra_vars or ()))
    request = runner.RunRequest(playbook="backup.yml", inventory=inventory, extra_vars=extra, check=check)
    raise typer.Exit(execute(request, as_json=as_json))


def _out_vars(out: Path | None) -> tuple[str, ...]:
    if out is None:
        return ()
    return (json.dumps({"backup_fetch_dir": str(out.expanduser().resolve())}),)


@backup_app.command("list")
def backup_list(
    out: OutOption = None,
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    as_json: JsonOption = False,
) -> None:
    """The archives on the first control-plane node (and in --out DIR here), oldest first."""
    extra = (*_out_vars(out), *(extra_vars or ()))
    request = runner.RunRequest(playbook="backup_list.yml", inventory=inventory, extra_vars=extra)
    raise typer.Exit(execute(request, as_json=as_json))


ArchiveArgument = Annotated[
    str, typer.Argument(help="An archive on this machine, or the name of one on the first control-plane node")
]


def _archive_vars(archive: str) -> tuple[str, ...]:
    local = Path(archive).expanduser()
    value = str(local.resolve()) if local.exists() else archive
    return (json.dumps({"backup_archive": value}),)


@backup_app.command("verify")
def backup_verify(
    archive: ArchiveArgument,
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check ARCHIVE with backup_passphrase: its authentication code, every member against the manifest."""
    extra = (*_archive_vars(archive), *(extra_vars or ()))
    request = runner.RunRequest(playbook="backup_verify.yml", inventory=inventory, extra_vars=extra)
    raise typer.Exit(execute(request, as_json=as_json))


@app.command()
def restore(
    archive: ArchiveArgument,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore onto a healthy control plane, or from an archive whose CA is not the workers'.",
        ),
    ] = False,
    inventory: InventoryOption = None,
    extra_vars: ExtraVarsOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Bring back a control plane that lost its state (disk replaced, kubeadm reset, /var/lib/etcd gone) from
    ARCHIVE: PKI, etcd, the control plane, kubeconfigs, the Run:ai database, missing Helm releases; then wait
    until every node is Ready. Workers keep their membership."""
    extra = (*_archive_vars(archive), f"backup_restore_force={json.dumps(force)}", *(extra_vars or ()))
    request = runner.RunRequest(playbook="restore.yml", inventory=inventory, extra_vars=extra, check=check)
    raise typer.Exit(execute(request, as_json=as_json))


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        app(prog_name="appliance")  # the parser's own usage errors exit 2 from here
        code = 0
    except ApplianceError as error:
        if debug:
            traceback.print_exc()
        errors.print(f"appliance: error: {error}", highlight=False, soft_wrap=True)
        code = error.exit_code
    except KeyboardInterrupt:
        errors.print("appliance: interrupted")
        code = 130
    except Exception as error:  # a defect: still one line unless --debug
        if debug:
            traceback.print_exc()
        errors.print(
            f"appliance: internal error: {type(error).__name__}: {error} (run with --debug)", soft_wrap=True
        )
        code = 1
    sys.exit(code)


__all__ = ["UsageError", "app", "main"]
