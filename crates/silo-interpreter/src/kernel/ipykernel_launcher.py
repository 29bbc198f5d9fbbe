# silo's ipykernel launcher, run with `python -c` in place of `-m ipykernel_launcher`.
# ipykernel 7 receives shell requests on a "Shell channel" thread (there for subshells,
# which silo's clients never open) and hands each to the main thread: one more thread
# wake-up per request, ~1.2 ms of every run_code under gVisor. Here the shell socket is read
# on the main thread, the way ipykernel 6 did and ipykernel 7 still does for a kernel
# without that thread. An ipykernel of another shape starts unchanged.
import sys
from pathlib import Path

# As ipykernel_launcher: keep the cwd off sys.path while ipykernel imports (IPython puts it
# back before user code runs).
if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
    del sys.path[0]


def main():
    import threading

    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from traitlets import Type

    if not (hasattr(IPKernelApp, "shell_channel_thread")
            and hasattr(IPythonKernel, "_supports_kernel_subshells")):
        IPKernelApp.launch_instance()
        return

    class NoShellChannel:
        # ipykernel asks for the thread by truth value everywhere but one place, which wants
        # the thread that runs cells; None would fail there (top-level `await`).
        parent_thread = threading.main_thread()

        def __bool__(self):
            return False

    class Kernel(IPythonKernel):
        @property
        def _supports_kernel_subshells(self):
            return False

    class App(IPKernelApp):
        kernel_class = Type(Kernel, klass=IPythonKernel)

        def init_sockets(self):
            super().init_sockets()
            unused = self.shell_channel_thread
            self.shell_channel_thread = NoShellChannel()
            # Never started: close the event loop it made, with its file descriptors.
            loop = getattr(unused, "io_loop", None)
            if loop is not None:
                loop.close()

    App.launch_instance()


main()
