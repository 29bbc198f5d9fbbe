# Expects two silo servers on 127.0.0.1:3900 (agent A) and :3901 (agent B), their API keys
# in /tmp/probe/keyA and /tmp/probe/keyB.
import os, sys, time, statistics, json
from e2b_code_interpreter import Sandbox
servers = {"A": "http://127.0.0.1:3900", "B": "http://127.0.0.1:3901"}
def setenv(n):
    os.environ.update(E2B_API_URL=servers[n], E2B_SANDBOX_URL=servers[n], E2B_API_KEY=open(f'/tmp/probe/key{n}').read().strip())
sb = {}
for n in servers:
    setenv(n); sb[n] = Sandbox.create(timeout=1200); sb[n].run_code("1+1")
N = int(os.environ.get("N", "100"))
res = {}
def rec(w, n, v): res.setdefault(w, {}).setdefault(n, []).append(v)
for i in range(N):
    for n in (["A", "B"] if i % 2 == 0 else ["B", "A"]):
        setenv(n); s = sb[n]
        time.sleep(0.05)
        t = time.perf_counter(); r = s.run_code("1+1"); rec("run_code 1+1", n, (time.perf_counter() - t) * 1000); assert r.text == "2"
        time.sleep(0.05)
        t = time.perf_counter(); r = s.run_code("print(1)"); rec("run_code print(1)", n, (time.perf_counter() - t) * 1000); assert r.logs.stdout == ["1\n"], r
for w, per in res.items():
    for n, xs in per.items():
        xs = sorted(xs)
        print(f"{w:20s} {n}: n {len(xs)} p50 {statistics.median(xs):6.2f} p90 {xs[int(len(xs)*.9)]:6.2f} ms")
json.dump(res, open("/tmp/probe/abcode.json", "w"))
for n in servers:
    setenv(n); sb[n].kill()
