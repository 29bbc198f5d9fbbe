import os, sys
from e2b_code_interpreter import Sandbox
for n, port in (("A", 3900), ("B", 3901)):
    os.environ.update(E2B_API_URL=f"http://127.0.0.1:{port}", E2B_SANDBOX_URL=f"http://127.0.0.1:{port}", E2B_API_KEY=open(f'/tmp/probe/key{n}').read().strip())
    s = Sandbox.create(timeout=600)
    r = s.run_code("""
import sys, time
t = time.perf_counter()
for i in range(50):
    print("x"); sys.stdout.flush()
dt = (time.perf_counter() - t) / 50 * 1000
pub = sys.stdout.pub_thread
(round(dt, 3), type(sys.stdout).flush.__qualname__, len(pub._events))
""")
    print(n, r.text, r.error)
    s.kill()
