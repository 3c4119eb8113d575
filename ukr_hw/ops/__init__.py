"""Operations: the native stack's servers as plain processes on loopback, one module per server.

| module | what |
| --- | --- |
| :mod:`~ukr_hw.ops.ports` | free ports, "port taken" errors that say what to do |
| :mod:`~ukr_hw.ops.wait` | the one readiness wait (servers, ``ukr-hw up``, API client, benchmarks), the HTTP probe |
| :mod:`~ukr_hw.ops.processes` | a child process tree: start with its own log, liveness, stop (TERM, then KILL) |
| :mod:`~ukr_hw.ops.postgres` | databases on the PostgreSQL server the stack uses |
| :mod:`~ukr_hw.ops.s3` | SeaweedFS (``weed mini``) as the S3 server |
| :mod:`~ukr_hw.ops.mlflow_server` | ``mlflow server`` on PostgreSQL with proxied S3 artifacts |
| :mod:`~ukr_hw.ops.prefect_server` | ``prefect server start`` and a process worker |
| :mod:`~ukr_hw.ops.services` | the table of the stack's services: what each needs, how it starts, its probe |
| :mod:`~ukr_hw.ops.stack` | :class:`~ukr_hw.ops.stack.Stack`: addresses, credentials, state file, up/down/status |
| :mod:`~ukr_hw.ops.cli` | ``ukr-hw stack up|down|status`` |
| :mod:`~ukr_hw.ops.bootstrap` | the bootstrap once the servers are up: users, pools, deployments, a first champion |
| :mod:`~ukr_hw.ops.locks` | the data lock the flows hold on ``data/processed`` (a file lock + a Prefect limit) |
| :mod:`~ukr_hw.ops.retries` | the retry policy of the flows' network-bound tasks (transient errors only) |

Libraries chosen (one line each):

* **psutil** for process trees, liveness and zombies: it reads ``/proc`` portably and reaps what it waits for, so
  nothing here parses ``/proc/<pid>/stat`` by hand (already pulled in by BentoML, DVC and MLflow).
* **tenacity** for the readiness wait: stop-after-delay, a fixed poll interval, exceptions that end the wait at once
  — the maintained retry library rather than a ``while``/``deadline`` loop in every server.
* **httpx** for the HTTP probes (the project's HTTP client everywhere else).

:mod:`ukr_hw.stack` re-exports the names other code uses (``from ukr_hw import stack``).
"""

from __future__ import annotations

from pathlib import Path

LOOPBACK = "127.0.0.1"
#: the checkout this package runs from (flows/, services/, prefect.yaml live here)
REPO = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A service could not be started or reached; the message says why and what to do."""
