#!/usr/bin/perl
# The Perl peer of the daemon benchmark: what the Perl WorkerManager does on TheSchwartz.
# Keeps CONCURRENCY children; each loops work_once, sleeps 5 s when it finds nothing, and exits
# after WORKS_PER_CHILD jobs (then the parent forks a fresh one). Stops when the queue is empty.
# usage: theschwartz_prefork.pl DSN FUNCNAME CONCURRENCY WORKS_PER_CHILD [IDLE_SLEEP]
use strict;
use warnings;
use DBI;
use POSIX ":sys_wait_h";
use TheSchwartz;
use Time::HiRes qw(time sleep);

my ($dsn, $funcname, $concurrency, $works_per_child, $idle_sleep) = @ARGV;
die "usage: $0 DSN FUNCNAME CONCURRENCY WORKS_PER_CHILD [IDLE_SLEEP]\n" unless $works_per_child;
$idle_sleep = 5 unless defined $idle_sleep;

{
    package Bench::PerlNoop;
    use base 'TheSchwartz::Worker';
    sub work { my ($class, $job) = @_; $job->completed; }
}
# Perl TheSchwartz maps a worker class to the funcname of the same name.
no strict 'refs';
@{"${funcname}::ISA"} = ('Bench::PerlNoop');
use strict 'refs';

sub child {
    my $client = TheSchwartz->new(databases => [{ dsn => $dsn, user => '', pass => '' }]);
    $client->can_do($funcname);
    my $done = 0;
    while ($done < $works_per_child) {
        if ($client->work_once) { $done++ } else { sleep $idle_sleep }
    }
    exit 0;
}

sub queue_left {
    my $dbh = DBI->connect($dsn, '', '', { RaiseError => 1, PrintError => 0 });
    $dbh->sqlite_busy_timeout(5000) if $dsn =~ /SQLite/;
    my ($n) = $dbh->selectrow_array("SELECT COUNT(*) FROM job");
    $dbh->disconnect;
    return $n;
}

my %kids;
my $started = time;
my $forks = 0;
while (1) {
    while (keys %kids < $concurrency) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) { child() }
        $kids{$pid} = 1;
        $forks++;
    }
    my $pid = waitpid(-1, WNOHANG);
    if ($pid > 0) { delete $kids{$pid}; next }
    last if queue_left() == 0;
    sleep 0.05;
}
my $elapsed = time - $started;
kill 'TERM', keys %kids;
waitpid($_, 0) for keys %kids;
printf "elapsed=%.3f forks=%d\n", $elapsed, $forks;
