# silo's ipykernel launcher, run with `python -c` in place of `-m ipykernel_launcher`.
# ipykernel 7 receives shell requests on a "Shell channel" thread (there for subshells,
# which silo's clients never open) and hands each to the main thread: one more thread
# wake-up per request, ~1.2 ms of every run_code under gVisor. Here the shell socket is read
# on the main thread, the way ipykernel 6 did and ipykernel 7 still does for a kernel
# without that thread. And the main thread sends its IOPub messages (status, the input,
# results) itself when nothing is queued ahead of them, instead of handing each to the
# IOPub thread (ADR 0020). An ipykernel of another shape starts unchanged.
import sys
from pathlib import Path

# As ipykernel_launcher: keep the cwd off sys.path while ipykernel imports (IPython puts it
# back before user code runs).
if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
    del sys.path[0]


def send_iopub_from_the_main_thread():
    # ipykernel's IOPubThread runs every send on its own thread: for each message the main
    # thread queues a closure, wakes the thread and hands it the GIL, ~40 system calls per
    # run_code that under gVisor cost more than the kernel's work. Other threads (user
    # threads printing, the control thread, output piped from forked children) still go
    # through it, so their output is not held up by a busy main thread.
    import threading

    from ipykernel import iostream, kernelapp

    base = iostream.IOPubThread
    if not all(hasattr(base, name) for name in
               ("_handle_event", "_really_send", "_setup_xpub_listener")) \
            or not all(hasattr(iostream.OutStream, name) for name in
                       ("_flush", "flush", "_schedule_flush")):
        return

    class IOPub(base):
        def __init__(self, *args, **kwargs):
            # Held by whoever uses the socket (zmq sockets are not thread-safe) and around
            # a stream's flush, so a direct send cannot pass output already taken for
            # sending. Reentrant: a queued flush sends while its thread holds it.
            self.silo_order = threading.RLock()
            super().__init__(*args, **kwargs)

        def _setup_xpub_listener(self):
            # Reading subscriptions would use the socket outside `silo_order`. They only serve
            # welcome messages, which silo's client does not wait for.
            pass

        def _handle_event(self, msg):
            with self.silo_order:
                super()._handle_event(msg)

        def send_multipart(self, *args, **kwargs):
            if threading.current_thread() is threading.main_thread() and self.thread.is_alive():
                with self.silo_order:
                    # Behind anything already queued (a stream's output), in order.
                    if not getattr(self, "_events", True):
                        self._really_send(*args, **kwargs)
                        return
            super().send_multipart(*args, **kwargs)

    send_buffered = iostream.OutStream._flush

    def send_buffered_in_order(stream):
        order = getattr(stream.pub_thread, "silo_order", None)
        if order is None:
            send_buffered(stream)
            return
        with order:
            send_buffered(stream)

    flush = iostream.OutStream.flush

    def flush_from_the_main_thread(stream):
        # As the sends above: the main thread flushes itself when nothing is queued ahead,
        # instead of asking the IOPub thread to and waiting for it.
        pub = stream.pub_thread
        order = getattr(pub, "silo_order", None)
        if order is not None and threading.current_thread() is threading.main_thread() \
                and pub.thread.is_alive():
            with order:
                if not getattr(pub, "_events", True):
                    stream._flush()
                    return
        flush(stream)

    arm_flush_timer = iostream.OutStream._schedule_flush

    def arm_flush_timer_aside(stream):
        # A write arms a timer that flushes 0.2 s later on the IOPub thread. ipykernel
        # queues the arming with the sends, where it would keep the main thread's next
        # flush and sends from going direct; the loop's own thread-safe callback arms it
        # as well.
        loop = getattr(stream, "_io_loop", None)
        if getattr(stream, "_flush_pending", None) is not False or loop is None \
                or not stream.pub_thread.thread.is_alive():
            arm_flush_timer(stream)
            return
        stream._flush_pending = True
        loop.add_callback(loop.call_later, stream.flush_interval, stream._flush)

    iostream.OutStream._flush = send_buffered_in_order
    iostream.OutStream.flush = flush_from_the_main_thread
    iostream.OutStream._schedule_flush = arm_flush_timer_aside
    kernelapp.IOPubThread = IOPub


def main():
    import threading

    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from traitlets import Type

    send_iopub_from_the_main_thread()
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
