"""The web console, `workermanager web -f conf.yml`: a process of its own (the master's loop never
serves it) showing the fleet, the queues, the failed jobs and a sizing estimate, with retry and
delete behind a token. See docs/web-console.md.

settings.py reads the config's `web:` key; jobstats.py the last hour of the job log; sizing.py
turns it into a concurrency; charts.py draws SVG; app.py is the Flask app; server.py serves it
with waitress, bounded.
"""
