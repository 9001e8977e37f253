#!/bin/bash
# count.sh DIR: the nodes' membership log lines per 10 s (all nodes), by kind
cd $1
cat n*.log | sed -E 's/\x1b\[[0-9;]*m//g' | awk '
/unless it announces itself|checking it myself/ {k="dispute"}
/is unreachable \(reported by/ {k="accepted"}
/reported by another peer; no answer to a dial/ {k="disputed-fail"}
/lost as a gossip neighbour; no answer/ {k="lost-neighbour-fail"}
/a routine check; no answer/ {k="routine-fail"}
/reported me unreachable/ {k="refute"}
/is not keeping up/ {k="strained"}
/keeps up again/ {k="recovered"}
{ if (k != "") { t=substr($1,12,7); c[t" "k]++ } k="" }
END { for (x in c) print x, c[x] }' | sort | awk '{ if ($1 != last && last != "") { print last"x "line; line="" } last=$1; line=line" "$2"="$3 } END { print last"x "line }'
