"""A worker process of a run: ``python -m hpsearch.study.worker`` reads its spec from standard input (the validated
space and the worker's options, as JSON) and runs trials on the study until the shared total is reached.

The launcher (:mod:`hpsearch.study.launch`, :mod:`hpsearch.study.raylaunch`) decided everything before it started
the worker: the space was validated, the run's rules checked, the data tokenized and the study created; the
worker's slot gave it its environment (GPU, memory share, threads, rank). So the worker does not re-enter the
user's command line: it gets the very space the parent validated (a mapping from Python too, with no file to read
back) and typed options, not flags to parse, and the storage URL never shows in a process list. It exits as the CLI
does: 0, 1 or 2 with one ``error:`` line, 130 / 143 when interrupted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from ..config.options import RunOptions
from ..config.space import Space
from ..errors import exit_status


def spec(space: Space, options: RunOptions) -> str:
    """What a worker reads from its standard input."""
    return json.dumps({"config": space.config, "source": space.source, "options": options.as_dict()})


def start(worker_spec: str, env: dict[str, str], cwd: str | None = None, **popen: Any) -> subprocess.Popen:
    """Start a worker process with ``env`` as its environment and hand it ``worker_spec``."""
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch.study.worker"], stdin=subprocess.PIPE, env=env,
                            cwd=cwd, text=True, **popen)
    assert proc.stdin is not None
    proc.stdin.write(worker_spec)
    proc.stdin.close()
    return proc


def main() -> int:
    """Run the spec on standard input; return the exit code."""
    from .. import interrupts

    # The launcher forwards its user's Ctrl-C: listen for it even where SIGINT came in ignored (a launcher started
    # in the background, `cmd &`, passes that on to its children). From here on a signal is held until a point where
    # stopping is safe (the study checks before its first trial): raised at once, it could land in an import or in
    # a finalizer, where Python prints a traceback and drops it, and the worker would go on training.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupts.raise_terminated)
    try:
        with interrupts.handled():
            from .runner import run_study

            given = json.load(sys.stdin)
            run_study(Space(given["config"], given["source"]), RunOptions(**given["options"]))
    except (Exception, KeyboardInterrupt) as exc:
        status = exit_status(exc)
        if status is None:
            raise
        print(status[1], file=sys.stderr, flush=True)
        return status[0]
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
