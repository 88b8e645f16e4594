"""Workers the web console tests run: one that fails while a switch file exists, so a job can
fail for good, be retried from the console, and then run."""

from __future__ import annotations

import os

from workermanager import Worker

from testworkers import record


class Flaky(Worker):
    """Fails for good (no retries) while the file named by $WEB_FAIL_SWITCH exists; else runs."""

    funcname = "Web::Flaky"
    max_retries = 0

    def work(self, job):
        if os.path.exists(os.environ["WEB_FAIL_SWITCH"]):
            record(job, "failed")
            raise RuntimeError("failing on purpose: the switch file exists")
        record(job, "ran")
