"""Kubernetes' generated OpenAPI definitions, which its module zip does not carry.

kube-apiserver imports k8s.io/kubernetes/pkg/generated/openapi, whose zz_generated.openapi.go upstream
generates at build time (build/root/Makefile.generated_files, target gen_openapi). This re-creates it the
same way: openapi-gen at the version Kubernetes pins (k8s.io/kube-openapi), over the packages whose
files carry a `+k8s:openapi-gen=` tag, in the Kubernetes tree and its staging modules. Go refuses to
overlay files in the module cache, so the build uses a writable copy of the Kubernetes module with the
generated file added (a `replace` in the wrapper module points at it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from appliance.errors import ApplianceError

GENERATED = "pkg/generated/openapi/zz_generated.openapi.go"
OPENAPI_GEN = "k8s.io/kube-openapi/cmd/openapi-gen"
# Staging modules whose tagged packages upstream's scan leaves out.
SKIPPED_STAGING = {"code-generator", "sample-apiserver"}
_TAG = re.compile(r"^// *\+k8s:", re.MULTILINE)


def prepare(
    work: Path, version: str, staging_version: str, env: dict[str, str], log: Callable[[str], None]
) -> str:
    """Give WORK a writable copy of k8s.io/kubernetes@VERSION with its generated OpenAPI file; return the
    replace directive that points the wrapper module at it."""
    copy = work / "src" / "kubernetes"
    if (copy / GENERATED).is_file():
        return "k8s.io/kubernetes => ./src/kubernetes"
    module_dir = _download(f"k8s.io/kubernetes@{version}", work, env)
    staging = _staging_modules(module_dir)
    staging_dirs = {name: _download(f"k8s.io/{name}@{staging_version}", work, env) for name in staging}
    # openapi-gen loads its input packages through the wrapper module: every staging module must be in it.
    _go(
        ["get", *(f"k8s.io/{name}@{staging_version}" for name in staging)],
        work,
        env,
        "go get of the staging modules",
    )
    log("go: building openapi-gen at the version Kubernetes pins")
    tool = work / "bin" / "openapi-gen"
    _go(["build", "-trimpath", "-o", str(tool), OPENAPI_GEN], work, env, "go build of openapi-gen")
    packages = input_packages(module_dir, staging_dirs)
    log(f"go: generating Kubernetes' OpenAPI definitions from {len(packages)} packages (several minutes)")
    with tempfile.TemporaryDirectory(prefix="appliance-openapi-") as tmp:
        result = subprocess.run(
            [
                str(tool), "--logtostderr",
                "--input-dirs", ",".join(packages),
                "--output-package", "k8s.io/kubernetes/pkg/generated/openapi",
                "--output-file-base", "zz_generated.openapi",
                "--go-header-file", str(staging_dirs["code-generator"] / "hack" / "boilerplate.go.txt"),
                "--report-filename", str(Path(tmp) / "violations.report"),
                "--output-base", tmp,
            ],
            cwd=work, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        generated = Path(tmp) / "k8s.io/kubernetes" / GENERATED
        if result.returncode != 0 or not generated.is_file():
            raise ApplianceError(f"openapi-gen failed: {' | '.join(result.stderr.strip().splitlines()[-3:])}")
        # Upstream fails its build when the API rule report differs from the checked-in exceptions.
        expected = module_dir / "api" / "api-rules" / "violation_exceptions.list"
        if (Path(tmp) / "violations.report").read_text() != expected.read_text():
            raise ApplianceError("openapi-gen's API rule report differs from Kubernetes' own exception list")
        partial = copy.with_name("kubernetes.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(module_dir, partial, symlinks=True)
        for directory, _, _ in os.walk(partial):  # the module cache is read-only; the copy must not be
            os.chmod(directory, 0o755)
        shutil.copyfile(generated, partial / GENERATED)
        shutil.rmtree(copy, ignore_errors=True)
        partial.rename(copy)
    return "k8s.io/kubernetes => ./src/kubernetes"


def input_packages(module_dir: Path, staging_dirs: dict[str, Path]) -> list[str]:
    """Import paths of packages with a file tagged `+k8s:openapi-gen=`, found as upstream's Makefile does."""
    found = set()
    roots = [("k8s.io/kubernetes", module_dir)]
    roots += [(f"k8s.io/{name}", path) for name, path in staging_dirs.items() if name not in SKIPPED_STAGING]
    for import_root, root in roots:
        for directory, subdirectories, files in os.walk(root):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(("_", ".")) and d != "vendor"]
            for name in files:
                if not name.endswith(".go") or name.startswith(("_", ".")):
                    continue
                text = Path(directory, name).read_text(errors="replace")
                if "+k8s:openapi-gen=" in text and _TAG.search(text):
                    relative = Path(directory).relative_to(root).as_posix()
                    found.add(import_root if relative == "." else f"{import_root}/{relative}")
                    break
    return sorted(found)


def _staging_modules(module_dir: Path) -> list[str]:
    go_mod = (module_dir / "go.mod").read_text()
    return sorted(set(re.findall(r"k8s\.io/([a-z0-9-]+) => \./staging/src/k8s\.io/", go_mod)))


def _download(module: str, work: Path, env: dict[str, str]) -> Path:
    result = subprocess.run(["go", "mod", "download", "-json", module], cwd=work, env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}
    if result.returncode != 0 or "Dir" not in info:
        raise ApplianceError(f"go mod download {module} failed: {info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"])


def _go(arguments: list[str], work: Path, env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        ["go", *arguments], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ApplianceError(f"{what} failed: {' | '.join(result.stderr.strip().splitlines()[-4:])}")
