# A Perl workload for the LD_PRELOAD test: hashes, arrays, string building,
# regexes, sort, in waves so freed memory is reused. Prints a digest of the
# results; the output must not depend on the allocator.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $seed = 42;
sub rnd { $seed = ($seed * 16807) % 2147483647; return $seed % $_[0]; }

my $digest = Digest::MD5->new;
for my $wave (1 .. 6) {
    my %h;
    for my $i (1 .. 40000) {
        my $k = "key$i-" . ('y' x rnd(80));
        $h{$k} = [ map { rnd(1000) } 1 .. rnd(10) ];
    }
    my @keys = sort keys %h;
    my $s = join ',', @keys[ grep { $_ % 5 == 0 } 0 .. $#keys ];
    $s =~ s/key(\d+)/K$1/g;
    my %count;
    $count{ substr($_, 0, 3) }++ for split /,/, $s;
    my @parts = map { substr($s, $_ * 1000, rnd(3000)) } 0 .. int(length($s) / 1000);
    my $joined = join '|', reverse @parts;
    $digest->add(join ';', map { "$_=$count{$_}" } sort keys %count);
    $digest->add($joined);
    my $total = 0;
    $total += scalar @{ $h{$_} } for @keys;
    $digest->add($total);
}
print "perl workload ", $digest->hexdigest, "\n";
