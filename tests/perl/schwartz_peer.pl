#!/usr/bin/perl
# Perl TheSchwartz as a peer of workermanager.theschwartz, driven by tests/test_theschwartz_perl.py
# and bench/theschwartz_bench.py. For PostgreSQL and MySQL set WM_PEER_USER, WM_PEER_PASS and,
# for prefixed tables, WM_PEER_PREFIX.
#
#   schwartz_peer.pl DSN insert FUNCNAME ARG [COUNT]   insert COUNT jobs with a plain-string ARG; print handles
#   schwartz_peer.pl DSN insert_ref FUNCNAME           insert one job whose arg is a hashref (Storable)
#   schwartz_peer.pl DSN work FUNCNAME MODE            work until done; MODE complete|fail|echo; print args
#   schwartz_peer.pl DSN status HANDLE                 print "exit=<status>" and one "error=<msg>" per row
#   schwartz_peer.pl DSN insert_bench N                time N single inserts; print "seconds=<s>"
#   schwartz_peer.pl DSN work_bench FUNCNAME            work no-op jobs until done; print start=, end=, done=
use strict;
use warnings;
use TheSchwartz;
use Time::HiRes qw(time);

package Peer::Worker;
use base qw(TheSchwartz::Worker);
our $MODE = 'complete';
our $COUNT = 0;
sub keep_exit_status_for { 3600 }
sub max_retries { 0 }
sub work {
    my ($class, $job) = @_;
    $COUNT++;
    if ($MODE eq 'bench') { $job->completed; return; }
    my $arg = defined $job->arg ? $job->arg : '';
    print "arg=$arg\n";
    if ($MODE eq 'fail') {
        $job->failed("perl says no", 3);
    } else {
        $job->completed;
    }
}

package main;

my ($dsn, $command, @rest) = @ARGV;
# Server databases: user, password and table prefix come from the environment (never argv).
my %db = (dsn => $dsn, user => $ENV{WM_PEER_USER} // '', pass => $ENV{WM_PEER_PASS} // '');
$db{prefix} = $ENV{WM_PEER_PREFIX} if $ENV{WM_PEER_PREFIX};
my $client = TheSchwartz->new(databases => [\%db]);
$| = 1;

if ($command eq 'insert') {
    my ($funcname, $arg, $count) = @rest;
    for (1 .. ($count || 1)) {
        my $handle = $client->insert($funcname, $arg) or die "insert failed\n";
        print "handle=", $handle->as_string, "\n";
    }
} elsif ($command eq 'insert_ref') {
    my ($funcname) = @rest;
    my $handle = $client->insert($funcname, { frozen => 'by Storable' }) or die "insert failed\n";
    print "handle=", $handle->as_string, "\n";
} elsif ($command eq 'work') {
    my ($funcname, $mode) = @rest;
    $Peer::Worker::MODE = $mode;
    alias_worker($funcname);
    $client->can_do($funcname);
    $client->work_until_done;
} elsif ($command eq 'status') {
    my ($handle) = @rest;
    my $h = $client->handle_from_string($handle);
    my $exit = $h->exit_status;
    print "exit=", (defined $exit ? $exit : 'undef'), "\n";
    print "error=$_\n" for $h->failure_log;
    print "failures=", $h->failures, "\n";
} elsif ($command eq 'insert_bench') {
    my ($n) = @rest;
    my $t0 = time;
    $client->insert('Bench::Noop', "x$_") or die "insert failed\n" for 1 .. $n;
    printf "seconds=%.6f\n", time - $t0;
} elsif ($command eq 'work_bench') {
    my ($funcname) = @rest;
    $Peer::Worker::MODE = 'bench';
    alias_worker($funcname);
    $client->can_do($funcname);
    printf "start=%.6f\n", time;
    $client->work_until_done;
    printf "end=%.6f\n", time;
    print "done=$Peer::Worker::COUNT\n";
} else {
    die "unknown command $command\n";
}

# TheSchwartz dispatches on the funcname as a Perl class: make FUNCNAME a subclass of Peer::Worker.
sub alias_worker {
    my ($funcname) = @_;
    no strict 'refs';
    @{"${funcname}::ISA"} = ('Peer::Worker') unless $funcname eq 'Peer::Worker';
}
