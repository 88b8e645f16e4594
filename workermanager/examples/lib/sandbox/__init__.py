"""Example workers, Python versions of the Perl WorkerManager's Sandbox::Worker examples."""
