"""A root file the service account moves into its own log folder is never appended to or handed
over; an existing log keeps no permission beyond the log mode (safefiles' rule for existing files).

Run as real root with the throwaway account of tests/support/root_site.py.
"""

from __future__ import annotations

import os
import signal
import stat

from support.root_site import SECRET, assert_untouched, daemon_for, give_ledger, refused


def test_a_root_file_moved_into_the_log_folder_is_not_taken_as_the_error_log(site, daemons):
    # a root-only file the account could reach in a folder it writes (its own, here) ...
    stolen = os.path.join(site.svc, "root-only.conf")
    with open(stolen, "wb") as handle:
        handle.write(SECRET)
    os.chmod(stolen, 0o600)
    # ... renamed by the account as the error log it knows root will open and hand over
    os.rename(stolen, os.path.join(site.svc, "error.log"))
    output = refused(daemon_for(daemons, site))
    assert "error.log" in output and "moved there from elsewhere" in output
    assert_untouched(os.path.join(site.svc, "error.log"))


def test_an_existing_log_keeps_no_permission_beyond_the_log_mode(site, daemons):
    job_log = os.path.join(site.svc, "job.log")
    with open(job_log, "w"):
        pass
    os.chown(job_log, site.account.uid, site.account.gid)
    os.chmod(job_log, 0o666)  # anyone could write lines into it
    daemon = daemon_for(daemons, site)
    give_ledger(daemon, site)
    daemon.start(wait_children=1)
    assert stat.S_IMODE(os.stat(job_log).st_mode) == 0o640
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
