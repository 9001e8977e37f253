#!/bin/bash
# sum.sh TAG...: one row per run of cache100.sh ASK=100 with its count.sh counts:
# busy >= 150 % until (s after the requests), sockets back to 9900 at, reports made by failed checks, drops taken, last drop (10 s slot), RSS median/max
cd ${DIR:-/tmp/lh}
for t in "$@"; do
  busy=$(awk '$4>=150 {last=$1} END {print last+0}' $t.load)
  full=$(awk '$7!=9900 {last=$1} END {print last+10}' $t.load)
  made=$(grep -o "fail=[0-9]*" $t-reports.txt | cut -d= -f2 | paste -sd+ | bc)
  dfail=$(grep -o "disputed-fail=[0-9]*" $t-reports.txt | cut -d= -f2 | paste -sd+ | bc)
  taken=$(grep -o "accepted=[0-9]*" $t-reports.txt | cut -d= -f2 | paste -sd+ | bc)
  disp=$(grep -o "dispute=[0-9]*" $t-reports.txt | cut -d= -f2 | paste -sd+ | bc)
  refute=$(grep -o "refute=[0-9]*" $t-reports.txt | cut -d= -f2 | paste -sd+ | bc)
  lastdrop=$(grep "accepted=\|fail=" $t-reports.txt | tail -1 | cut -d' ' -f1)
  first=$(head -1 $t-reports.txt | cut -d' ' -f1)
  rss=$(grep -A2 "asking nodes" $t.out | grep RSS | sed 's/RSS MB //')
  echo "$t | busy>=150% until ${busy} s | sockets 9900 from ${full} s | reports by failed checks ${made} (disputed ${dfail:-0}) | disputes ${disp:-0} | drops taken ${taken} | refutations ${refute} | first..last drop ${first}..${lastdrop} | RSS ${rss}"
done
