#!/bin/sh
# Removes from a virtualenv what only building or testing its libraries needs, so that an image
# carries what runs: the libraries' own test suites, C, C++ and Cython sources and headers, byte
# code of what is removed, pyarrow's Flight RPC (a network service no code here imports: only
# `import pyarrow.flight` loads it) and the installers themselves (the image installs nothing at run time).
set -eu
venv=${1:?usage: slim-venv.sh VENV}
site=$(echo "$venv"/lib/python3*/site-packages)
# a package's test suite: `tests` or `test` folders inside a package (never a top-level module)
find "$site" -mindepth 2 -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
find "$site" -type f \( -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' \
    -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -delete
rm -f "$site"/pyarrow/_flight.* "$site"/pyarrow/libarrow_flight.so* \
    "$site"/pyarrow/libarrow_python_flight.so* "$site"/pyarrow/_pyarrow_cpp_tests.*
"$venv/bin/python" -m pip uninstall --yes --quiet uv pip
