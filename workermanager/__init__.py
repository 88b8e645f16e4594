"""workermanager: a prefork worker-process manager daemon for TheSchwartz and Gearman jobs."""

from workermanager.worker import Job, JobAlreadyFinished, Worker, run_job

__version__ = "0.1.0"

__all__ = ["Job", "JobAlreadyFinished", "Worker", "run_job", "__version__"]
