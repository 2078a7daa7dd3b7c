# Draws libbatchnorm's speed-up over the fastest peer, per case; run by bn_bench:
#   gnuplot -e "datafile='...'; outfile='...png'; threadlist='1 2'; ymin=0.1; ymax=4" speedup.gp
# datafile: one line per case ("name layout" quoted), then one speed-up per mode
# (fwd-infer, fwd-train, backward) and thread count, in that order; "?" = not measured.
nthr = words(threadlist)
set terminal pngcairo size 1400,1200 font "sans,9"
set output outfile
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set xtics rotate by -30 scale 0 nomirror
set grid ytics
set logscale y 2
set yrange [ymin:ymax]
set format y "%g"
set key top left
set ylabel "best peer time / libbatchnorm time (log scale)"
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead lc rgb "red" dt 2 lw 1.5 front
set multiplot layout 3,1 title "libbatchnorm speed-up over the fastest peer (oneDNN, PyTorch); above the red line = faster"
do for [m = 1:3] {
  set title (m == 1 ? "inference forward" : m == 2 ? "training forward" : "backward")
  plot for [t = 1:nthr] datafile using (column(1 + (m - 1) * nthr + t)):xtic(1) \
       title sprintf("%s thread(s)", word(threadlist, t))
}
unset multiplot
