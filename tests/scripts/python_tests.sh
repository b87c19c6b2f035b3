#!/usr/bin/env bash
# The Python package's test: `pip install ./python` into a virtual environment kept in the
# build directory, then its pytest suite against the library just built.
#   python_tests.sh VENV_DIR SOURCE_DIR LIBCLATTN
# The first run creates the environment and installs numpy and pytest from PyPI (a
# failure to install them fails the test); later runs only reinstall the package.
set -euo pipefail
venv=$1 src=$2 lib=$3
# Debian's python3 has venv and pip (python3-venv); a pyenv shim earlier on PATH may not.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)

if ! "$venv/bin/python" -c "import numpy, pytest, setuptools, wheel" 2>/dev/null; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "setuptools>=61" wheel
  # As a user would: the package and its dependencies from PyPI, then pytest.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$src/python" pytest
else
  # Only the package changes between runs: reinstall it without the network.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    --force-reinstall "$src/python"
fi
cd "$venv"
CLATTN_LIBRARY=$lib exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$src/python/tests"
