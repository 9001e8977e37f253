# poll.py DIR N START: prints, whenever it changes, the fewest, average and full socket
# counts of the N nodes of ../binary-size-2026-11-30/start.sh (homes DIR/h00.. for N >= 10),
# with one os.listdir per node: an in-process poll, lighter than start.sh's ls loop. Used as
# start.sh with `python3 poll.py $D $N $start` inserted before its own wait loop.
import os,sys,time
D=sys.argv[1]; N=int(sys.argv[2]); t0=float(sys.argv[3]); last=None
while True:
    cs=[]
    for i in range(N):
        try: cs.append(sum(1 for f in os.listdir(f"{D}/h{i:02d}/peers") if f.endswith(".sock")))
        except FileNotFoundError: cs.append(0)
    t=time.time()-t0
    s=(min(cs), sum(cs)//N, sum(1 for c in cs if c==N-1))
    if s!=last:
        lag=[(i,c) for i,c in enumerate(cs) if c<N-1]
        print(f"t={t:.2f} min={s[0]} avg={s[1]} full={s[2]}" + (f" lagging={lag}" if len(lag)<=5 else ""), flush=True); last=s
    if s[0]==N-1: break
    if t>60: print("TIMEOUT"); break
    time.sleep(0.05)
