#!/bin/sh
# controller/install.sh DIR: installs the appliance controller (the `appliance` CLI, ansible-core,
# ansible-runner, the collections and the project's playbooks) into the virtualenv DIR from this bundle
# alone. No network, no pip, no python3-venv: Debian 12's python3 is enough.
#
#   /bundle/controller/install.sh /opt/appliance
#   /opt/appliance/bin/appliance --version
#
# Run `appliance bundle verify /bundle` first: this script trusts the files beside it.
# Running it again on the same DIR reinstalls (the way to move to a newer bundle).
set -eu

if [ "$#" -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "usage: $0 DIR   (DIR: a new or empty directory, or one this script installed into before)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
dir=$1
python=${PYTHON:-python3}

fail() { echo "install.sh: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || fail "no $python on PATH (Debian 12: apt install python3)"
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  fail "$python is $("$python" -c 'import platform; print(platform.python_version())'); the bundle's wheels are for CPython 3.11 (Debian 12's python3)"
[ "$(uname -m)" = x86_64 ] || fail "this machine is $(uname -m); the bundle's wheels are for x86_64"
set -- "$here"/wheels/pip-*.whl
[ -f "$1" ] || fail "no pip wheel in $here/wheels: not a bundle's controller/ directory"
pip_wheel=$1
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] && [ ! -f "$dir/pyvenv.cfg" ]; then
  fail "$dir is a non-empty directory that is not a virtualenv; give a new or empty directory"
fi

created=
[ -e "$dir" ] || created=yes
cleanup() {
  status=$?
  if [ "$status" -ne 0 ] && [ -n "$created" ]; then
    rm -rf "$dir"
    echo "install.sh: failed; removed the partial $dir" >&2
  fi
}
trap cleanup EXIT

echo "install.sh: creating the virtualenv $dir"
"$python" -m venv --without-pip "$dir"
dir=$(cd "$dir" && pwd)
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1
echo "install.sh: installing pip and the Python packages from $here/wheels (no index)"
"$dir/bin/python" "$pip_wheel/pip" install --quiet --no-warn-script-location --find-links "$here/wheels" pip
"$dir/bin/python" -m pip install --quiet --find-links "$here/wheels" --constraint "$here/constraints.txt" appliance

share="$dir/share/appliance"
echo "install.sh: unpacking the playbooks and roles into $share"
rm -rf "$share"
mkdir -p "$share"
tar -xzf "$here/project.tar.gz" -C "$share" --no-same-owner
echo "install.sh: installing the collections into $share/collections"
set -- "$here"/collections/*.tar.gz
ANSIBLE_COLLECTIONS_PATH="$share/collections" "$dir/bin/ansible-galaxy" collection install --offline --force --no-deps \
  --collections-path "$share/collections" "$@" >/dev/null

trap - EXIT
echo "install.sh: done: $("$dir/bin/appliance" --version). Run $dir/bin/appliance (or add $dir/bin to PATH)."
