# Bar chart of throughput relative to glibc: one cluster per workload and
# thread count, one bar per allocator, log scale so 0.5x and 2x look alike.
# Called by bench/run.sh as:
#   gnuplot -e "datafile='chart.dat'; outfile='latest.png'; ncols=N" bench/chart.gp
# chart.dat: a header "case alloc1 alloc2 ...", then "workload/NT ratio1 ratio2 ...",
# with "?" where a run crashed.
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1400,700 font "sans,10"
} else {
  set terminal png size 1400,700
}
set output outfile
set title "Throughput relative to glibc (median ops/s; higher is better)"
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y 2
set ylabel "x glibc"
set grid ytics
set key outside right top
set xtics rotate by 30 right noenhanced
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 lc rgb "black"
plot for [i=2:ncols+1] datafile using i:xtic(1) title columnheader(i)
