#!/bin/bash
# ab.sh SIZE ROUNDS OUT: interleaved variants
S=$1; R=$2; OUT=$3
for k in $(seq 1 $R); do
 for v in A B C D E; do
  case $v in
   A) BIN=/tmp/n2p-fin2; ENV="";;
   B) BIN=/tmp/n2p-heap; ENV="X_NOFLOOD=1";;
   C) BIN=/tmp/n2p-heap; ENV="X_HEAP=1 X_NOFLOOD=1";;
   D) BIN=/tmp/n2p-heap; ENV="X_HEAP=1";;
   E) BIN=/tmp/n2p-heap; ENV="";;
  esac
  r=$(env $ENV BIN=$BIN bash /tmp/my/start3.sh $S 2>&1 | grep -v "^t=" | tr '\n' ' ')
  echo "$v $S $r" >> $OUT
  sleep 1
 done
done
