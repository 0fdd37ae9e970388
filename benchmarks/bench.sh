#!/usr/bin/env bash
# Benchmark pgqueue against Procrastinate, PgQueuer and plain psycopg baselines.
#   bash benchmarks/bench.sh            full run (medians of 3, drains of 20,000 tasks)
#   bash benchmarks/bench.sh --quick    short run, under 3 minutes
# Any other arguments go to run.py (e.g. --systems plain,pgqueuer --scale).
# The peers live only in benchmarks/.venv, never in pgqueue's own dependencies.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
stamp="$venv/.requirements.sha"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
want="$(cat "$here/requirements.txt" "$root/pyproject.toml" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
    # pgqueue itself (the distribution pgqueue-tasks, once named pgqueue: that name is
    # uninstalled first), editable, from the repo root; it may not build yet: run.py then
    # skips it with a message and benchmarks the others.
    "$venv/bin/python" -m pip uninstall -q -y pgqueue 2>/dev/null || true
    if "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root"; then
        echo "$want" > "$stamp"
    else
        echo "bench.sh: pgqueue did not install from $root; it will be skipped" >&2
    fi
fi
"$venv/bin/python" "$here/run.py" "$@"
# Then concurrent producers against the insert trigger's NOTIFY (pgqueue only).
quick=()
for arg in "$@"; do [ "$arg" = "--quick" ] && quick=(--quick); done
"$venv/bin/python" "$here/producers.py" "${quick[@]}"
# Then limits and fair share against the claim before them, interleaved, and the keyed claim
# against the number of idle keys (docs/performance.md).
if [ ${#quick[@]} -gt 0 ]; then
    "$venv/bin/python" "$here/limits_drain.py" --tasks 5000 --rounds 2
else
    "$venv/bin/python" "$here/limits_drain.py" --tasks 20000 --rounds 3
fi
exec "$venv/bin/python" "$here/limits_claim.py"
