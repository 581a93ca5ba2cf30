# Draws the chart of `scripts/bench.sh --curves` from the points it wrote (TSV, one header line):
#   gnuplot -c scripts/bench-curves.gp POINTS.tsv CHART.svg [COMPARE-NAME] [TITLE]
# Four panels: one-shot connections/s and p99 against client threads; messages/s and p99 against held
# conversations. One colour per server; poolserver, then the --compare server if the points have one.
data = ARG1
out = ARG2
compare = ARG3
heading = ARG4

set terminal svg size 1100,820 dynamic noenhanced font "sans,12" background "white"
set output out
set datafile separator "\t"
set datafile missing "-"
set grid lc rgb "#dddddd"
set border lc rgb "#555555"

names = "poolserver" . (compare eq "" ? "" : " " . compare)
colors = "#1f77b4 #e6550d"
# Column COL of the rows of server NAME in series SERIES; NaN elsewhere, so each plot takes its own rows.
pick(name, series, col) = (strcol(1) eq name && strcol(2) eq series) ? column(col) : NaN
# Held conversations 0, 1,000, 10,000 at evenly spaced places.
held_at(x) = x == 0 ? 0 : log10(x) - 2

set multiplot layout 2,2 title heading

set title "One-shot connections: throughput"
set xlabel "client threads"
set logscale x 2
set xrange [0.7:1500]
set xtics ("1" 1, "8" 8, "64" 64, "256" 256, "1024" 1024)
set ylabel "connections/s"
set yrange [0:*]
set format y "%.0s%c"
set key bottom right
plot for [i=1:words(names)] data skip 1 using 3:(pick(word(names, i), "oneshot", 4)) \
    with linespoints lw 2 pt 7 lc rgb word(colors, i) title word(names, i)

set title "One-shot connections: p99 latency (connect to close)"
set ylabel "ms"
set format y "%g"
set logscale y
set yrange [*:*]
set key top left
plot for [i=1:words(names)] data skip 1 using 3:(pick(word(names, i), "oneshot", 9) / 1000) \
    with linespoints lw 2 pt 7 lc rgb word(colors, i) title word(names, i)

unset logscale
set title "Conversations: messages/s while others are held (each sending 1/s)"
set xlabel "held conversations"
set xrange [-0.2:2.2]
set xtics ("0" 0, "1,000" 1, "10,000" 2)
set ylabel "messages/s"
set yrange [0:*]
set format y "%.0s%c"
set key bottom left
plot for [i=1:words(names)] data skip 1 using (held_at($3)):(pick(word(names, i), "held", 5)) \
        with linespoints lw 2 pt 7 lc rgb word(colors, i) title word(names, i) . ": all answered", \
     for [i=1:words(names)] data skip 1 using (held_at($3)):(pick(word(names, i), "held", 6)) \
        with linespoints lw 2 dt 2 pt 6 lc rgb word(colors, i) title word(names, i) . ": the 8 active clients"

set title "Conversations: p99 latency per message"
set ylabel "ms"
set format y "%g"
set logscale y
set yrange [*:*]
set key bottom right
plot for [i=1:words(names)] data skip 1 using (held_at($3)):(pick(word(names, i), "held", 9) / 1000) \
        with linespoints lw 2 pt 7 lc rgb word(colors, i) title word(names, i) . ": the 8 active clients", \
     for [i=1:words(names)] data skip 1 using (held_at($3)):(pick(word(names, i), "held", 10) / 1000) \
        with linespoints lw 2 dt 2 pt 6 lc rgb word(colors, i) title word(names, i) . ": held"

unset multiplot
