#!/usr/bin/perl
# Perl Gearman::Worker for benchmarks: serves FUNC with a no-op until COUNT jobs ran (0 = forever).
#   gearman_worker.pl SERVERS FUNC COUNT
use strict;
use warnings;
use Gearman::Worker;

my ($servers, $func, $count) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => [split /,/, $servers]);
my $done = 0;
# Gearman::Worker 2.004 sends a false result ("" or "0") as a WORK_COMPLETE without its NUL
# separator, which gearmand rejects (and the job runs again): return a true value.
$worker->register_function($func => sub { $done++; return "ok" });
$worker->work(stop_if => sub { $count && $done >= $count }) ;
