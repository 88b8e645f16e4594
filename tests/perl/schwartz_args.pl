#!/usr/bin/perl
# Job args between Perl TheSchwartz and workermanager.theschwartz, driven by
# tests/test_theschwartz_args.py. For PostgreSQL and MySQL set WM_PEER_USER, WM_PEER_PASS and,
# for prefixed tables, WM_PEER_PREFIX (as tests/perl/schwartz_peer.pl).
#
#   schwartz_args.pl DSN insert FUNCNAME PERL_EXPR   insert one job whose arg is the value of PERL_EXPR
#                                                    (a reference is stored with Storable::nfreeze,
#                                                    as TheSchwartz does); print handle=
#   schwartz_args.pl DSN work FUNCNAME               work until done; print one line per job:
#                                                    "ref=<ref type> json=<JSON>" for a reference,
#                                                    "hex=<the string's bytes in hex>" for a string
use strict;
use warnings;
use utf8;
use JSON::PP;
use Storable;
use TheSchwartz;

package Args::Worker;
use base qw(TheSchwartz::Worker);
sub max_retries { 0 }
sub work {
    my ($class, $job) = @_;
    my $arg = $job->arg;
    if (!defined $arg) {
        print "undef\n";
    } elsif (ref $arg) {
        print "ref=", ref($arg), " json=", JSON::PP->new->canonical->allow_nonref->encode($arg), "\n";
    } else {
        print "hex=", unpack("H*", $arg), "\n";
    }
    $job->completed;
}

package main;

my ($dsn, $command, $funcname, $expr) = @ARGV;
my %db = (dsn => $dsn, user => $ENV{WM_PEER_USER} // '', pass => $ENV{WM_PEER_PASS} // '');
$db{prefix} = $ENV{WM_PEER_PREFIX} if $ENV{WM_PEER_PREFIX};
my $client = TheSchwartz->new(databases => [\%db]);
$| = 1;

if ($command eq 'insert') {
    my $arg = eval $expr;
    die "bad expression: $@" if $@;
    my $handle = $client->insert($funcname, $arg) or die "insert failed\n";
    print "handle=", $handle->as_string, "\n";
} elsif ($command eq 'work') {
    no strict 'refs';
    @{"${funcname}::ISA"} = ('Args::Worker');
    $client->can_do($funcname);
    $client->work_until_done;
} else {
    die "unknown command $command\n";
}
