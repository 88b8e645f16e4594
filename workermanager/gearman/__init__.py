"""The Gearman protocol as a library of its own: codec, client, worker and admin.

It knows nothing of the daemon: a web application imports it to submit jobs, a script to run a
worker. See codec.py for the wire format and unique.py for the unique-id format our client writes.
"""

from workermanager.gearman.admin import Admin, AdminError, FunctionStatus, WorkerInfo
from workermanager.gearman.client import (
    Client,
    GearmanError,
    JobException,
    JobFailed,
    JobStatus,
    JobTooBig,
    Task,
    TaskSet,
)
from workermanager.gearman.codec import Decoder, Packet, PacketType, ProtocolError
from workermanager.gearman.connection import DEFAULT_PORT, GearmanConnectionError, parse_address
from workermanager.gearman.unique import UniqueInfo, make_unique, parse_unique
from workermanager.gearman.worker import GrabbedJob, Worker

__all__ = [
    "Admin", "AdminError", "Client", "DEFAULT_PORT", "Decoder", "FunctionStatus", "GearmanConnectionError",
    "GearmanError", "GrabbedJob", "JobException", "JobFailed", "JobStatus", "JobTooBig", "Packet", "PacketType",
    "ProtocolError", "Task", "TaskSet", "UniqueInfo", "Worker", "WorkerInfo", "make_unique",
    "parse_address", "parse_unique",
]
