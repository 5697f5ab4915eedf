"""ansible-test's pip bootstrap, from PyPI.

ansible-test bootstraps pip in each sanity virtualenv with a get-pip script it downloads from
ci-files.testing.ansible.com, a host this machine cannot reach; it uses a copy it finds at
~/.ansible/test/cache/get_pip_<version>.py instead. scripts/collection-sanity.sh installs this file there,
beside pip's wheel from PyPI. Like upstream's get-pip, it takes pip's install options and the packages to
install, and --no-setuptools/--no-wheel, and runs pip from the wheel to install them.
"""

import glob
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
version = os.path.splitext(os.path.basename(__file__))[0].removeprefix("get_pip_").replace("_", ".")
wheels = glob.glob(os.path.join(here, f"pip-{version}-py3-none-any.whl"))
if not wheels:
    sys.exit(f"get-pip: no pip-{version} wheel beside {__file__}")
sys.path.insert(0, wheels[0])

from pip._internal.cli.main import main  # noqa: E402  (importable only once the wheel is on the path)

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
extra = [
    name
    for name, flag in (("setuptools", "--no-setuptools"), ("wheel", "--no-wheel"))
    if flag not in sys.argv
]
sys.exit(main(["install", "--upgrade", "--force-reinstall", *args, *extra]))
