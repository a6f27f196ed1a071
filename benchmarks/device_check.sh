#!/usr/bin/env bash
# The device check on a bare accelerator machine (no network, no `datasets`, no `tensorboardX`,
# embedlab not installed). Two steps:
#
#   bash benchmarks/device_check.sh prepare          # here, with network: fills .whl/ (git-ignored)
#   bash benchmarks/device_check.sh run OUT [ARGS]   # there, from the repository root
#
# `prepare` downloads the wheels of the packages the training path needs and the machine lacks
# (datasets and its dill / multiprocess, tensorboardX: about 1 MiB, for CPython 3.12 on x86-64)
# into .whl/ and copies the SST-2 and IMDB files from $EMBEDLAB_DATA (default ../shared/data)
# into .whl/data/ (about 27 MiB). Carry `.whl` with the working tree (64 MiB in all).
# `run` installs the wheels into /tmp/site without touching the machine's packages, points
# EMBEDLAB_DATA at .whl/data and runs `python3 benchmarks/device_check.py --out OUT ARGS`.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 tensorboardX==2.6.5)

case "${1:-}" in
  prepare)
    data="${EMBEDLAB_DATA:-$(cd .. && pwd)/shared/data}"
    mkdir -p .whl/data
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    for name in sst2 imdb; do
      rm -rf ".whl/data/$name"
      cp -r "$data/$name" .whl/data/
    done
    if ! git check-ignore -q .whl; then
      echo ".whl/ is not git-ignored: add /.whl/ to .gitignore" >&2
      exit 1
    fi
    du -sh .whl
    echo "carry [\".whl\"], then on the device: bash benchmarks/device_check.sh run \$OUT"
    ;;
  run)
    out="${2:?usage: device_check.sh run OUT [device_check.py arguments]}"
    shift 2
    if compgen -G ".whl/*.whl" > /dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if [ -d .whl/data ]; then
      export EMBEDLAB_DATA="$PWD/.whl/data"
    fi
    export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1
    exec python3 benchmarks/device_check.py --out "$out" "$@"
    ;;
  *)
    echo "usage: bash benchmarks/device_check.sh prepare | run OUT [device_check.py arguments]" >&2
    exit 2
    ;;
esac
