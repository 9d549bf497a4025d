#!/usr/bin/env bash
# The wheels bench/gpu.py needs on the lent GPU machines (Python 3.12, x86-64, no network there): what their image
# lacks of hpsearch's dependencies. Writes .whl/ (ignored by git), which the device call carries.
#   bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
for spec in optuna==5.0.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 colorlog==6.10.1 seqeval==1.2.2 \
    sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 bitsandbytes==0.50.2; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec" || python3 -m pip download -q --no-deps -d .whl "$spec"
done
du -sh .whl
