#!/usr/bin/perl
# Perl Gearman::Client for interop tests and benchmarks.
#   gearman_client.pl SERVERS MODE FUNC [ARG|COUNT]
# SERVERS: comma-separated host:port. MODE:
#   fg-plain  the same, with a client that did not ask for exceptions
#   fg        run one foreground job, print its result (or "EXCEPTION: ..." / "FAIL" / "FAIL: last warning")
#   bg        submit one background job, print its handle
#   latency   run COUNT foreground jobs one after another, print each round trip in microseconds
use strict;
use warnings;
use Gearman::Client;
use Time::HiRes qw(time);

my ($servers, $mode, $func, $arg) = @ARGV;
my $client = Gearman::Client->new(job_servers => [split /,/, $servers], exceptions => ($mode ne 'fg-plain'));
$| = 1;
if ($mode eq 'fg' or $mode eq 'fg-plain') {
    my ($exception, $warning);
    my $ref = $client->do_task($func, $arg, { on_exception => sub { $exception = shift },
                                              on_warning => sub { $warning = ${ shift() } } });
    if (defined $exception) { print "EXCEPTION: $exception\n" }
    elsif (defined $ref) { print $$ref, "\n" }
    elsif (defined $warning) { print "FAIL: $warning\n" }
    else { print "FAIL\n" }
} elsif ($mode eq 'bg') {
    my $handle = $client->dispatch_background($func, $arg);
    print defined $handle ? "$handle\n" : "FAIL\n";
} elsif ($mode eq 'latency') {
    for (1 .. $arg) {
        my $t0 = time;
        my $ref = $client->do_task($func, "x");
        die "job failed\n" unless defined $ref;
        printf "%d\n", (time - $t0) * 1e6;
    }
} else {
    die "unknown mode $mode\n";
}
