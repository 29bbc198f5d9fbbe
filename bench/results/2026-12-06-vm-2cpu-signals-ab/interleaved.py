# Interleaved A/B: each round runs every workload once on A and once on B (order alternating),
# so both agents see the same host phase. Prints p50/p90 per workload per agent.
import os, sys, time, statistics, json
sys.path.insert(0, "/work/main/bench")
from e2b import Sandbox
servers = {"A": "http://127.0.0.1:3900", "B": "http://127.0.0.1:3901"}
def setenv(n):
    os.environ.update(E2B_API_URL=servers[n], E2B_SANDBOX_URL=servers[n], E2B_API_KEY=open(f'/tmp/probe/key{n}').read().strip())
sb = {}
for n in servers:
    setenv(n); sb[n] = Sandbox.create("base", timeout=1200)
BLOCKS = ("a=${EPOCHREALTIME/./}; for ((i=0;i<100;i++)); do kill -0 $$; done; b=${EPOCHREALTIME/./}; echo $((b-a))")
N = int(os.environ.get("N", "100"))
res = {}
def rec(w, n, v): res.setdefault(w, {}).setdefault(n, []).append(v)
for i in range(N):
    for n in (["A", "B"] if i % 2 == 0 else ["B", "A"]):
        setenv(n); s = sb[n]
        time.sleep(0.1)
        t = time.perf_counter(); s.commands.run("echo hi", envs={"R": str(i)}); rec("cold echo hi (new env)", n, (time.perf_counter() - t) * 1000)
        time.sleep(0.1)
        s.commands.run("echo hi")
        t = time.perf_counter(); s.commands.run("echo hi"); rec("echo hi right after another", n, (time.perf_counter() - t) * 1000)
        time.sleep(0.1)
        t = time.perf_counter(); s.commands.run("echo hi"); rec("echo hi paced", n, (time.perf_counter() - t) * 1000)
        time.sleep(0.1)
        rec("100 syscalls in sandbox", n, int(s.commands.run(BLOCKS).stdout) / 1000)
for w, per in res.items():
    for n, xs in per.items():
        xs = sorted(xs)
        print(f"{w:28s} {n}: n {len(xs)} p50 {statistics.median(xs):6.2f} p90 {xs[int(len(xs)*.9)]:6.2f} ms")
json.dump(res, open("/tmp/probe/ab2.json", "w"))
for n in servers:
    setenv(n); sb[n].kill()
