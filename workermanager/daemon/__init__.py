"""The daemon's own parts: the master (master.py) and its children (child.py), what passes
between them (scoreboard.py), the job timer (jobalarm.py), the process titles, detaching and
the privilege drop (daemonize.py), the pid file and its lock (pidfile.py), the job log
(joblog.py), the status file the master keeps (statusfile.py), the helper processes it forks
(helperprocess.py, scheduleprocess.py) and the signal calls of its fork path (rawsignals.py).
Operator commands live in workermanager.commands; the queue libraries in workermanager.theschwartz
and workermanager.gearman."""
