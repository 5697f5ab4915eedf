#!/usr/bin/env bash
# `make collection`: builds the collection appliance.runai from galaxy.yml with ansible-galaxy, installs the
# artifact into a scratch ansible_collections tree and runs `ansible-test sanity` on it there, as Galaxy
# and Automation Hub would. Prints the artifact's path and keeps it in build/ (the bundle carries one).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ansible-galaxy collection build "$root" --output-path "$out" --force
artifact=$(ls -t "$out"/appliance-runai-*.tar.gz | head -1)
ansible-galaxy collection install "$artifact" --collections-path "$work" --no-deps --force >/dev/null

# ansible-test installs each sanity test's requirements (from PyPI) into a virtualenv of its own, after
# bootstrapping pip there with a script from ci-files.testing.ansible.com, which this machine cannot reach.
# It takes the script from its cache when there: ours installs pip from pip's wheel, from PyPI.
pip_version=$(python3 - <<'PY'
import re, ansible_test, pathlib
text = (pathlib.Path(ansible_test.__file__).parent / "_internal/python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", text).group(1))
PY
)
cache=$HOME/.ansible/test/cache
mkdir -p "$cache"
install -m 0644 "$root/scripts/ansible-test-get-pip.py" "$cache/get_pip_${pip_version//./_}.py"
if [ ! -f "$cache/pip-$pip_version-py3-none-any.whl" ]; then
    python3 -m pip download --quiet --no-deps --dest "$cache" "pip==$pip_version"
fi

cd "$work/ansible_collections/appliance/runai"
ansible-test sanity --python "$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" --color no
echo "collection: $artifact"
