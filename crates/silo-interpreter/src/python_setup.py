# Run silently by silo-interpreter in every new Python kernel (see snippets.rs).
# Adds two display formats E2B clients understand:
#   e2b/data  - a pandas DataFrame as {column: [values]}
#   e2b/chart - the data behind a matplotlib figure (line, scatter, bar, pie)
# writes the input history to its SQLite file in batches instead of after every cell, and
# drops two waits ipykernel makes per cell that silo's client does not need.
# Neither pandas nor matplotlib is imported here. Everything is wrapped in one function and deleted, so the user's namespace stays clean.
def __silo_setup():
    import json
    import re
    import sys
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    ip = get_ipython()
    if ip is None:
        return

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    def dataframe(df):
        try:
            split = json.loads(df.to_json(orient="split", date_format="iso"))
        except Exception:
            return None
        cols = [str(c) for c in split["columns"]]
        return {c: [row[i] for row in split["data"]] for i, c in enumerate(cols)}

    def unit(label):
        m = re.search(r"\s\((.*?)\)|\[(.*?)\]", label or "")
        return (m.group(1) or m.group(2)) if m else None

    def axis(ax, which):
        get = getattr
        label = get(ax, "get_%slabel" % which)() or None
        ticks = [num(t) for t in get(ax, "get_%sticks" % which)()]
        tick_labels = [t.get_text() for t in get(ax, "get_%sticklabels" % which)()]
        return {
            "%s_label" % which: label,
            "%s_unit" % which: unit(label),
            "%s_ticks" % which: ticks,
            "%s_tick_labels" % which: tick_labels,
            "%s_scale" % which: get(ax, "get_%sscale" % which)(),
        }

    def chart_of_axes(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.lines import Line2D
        from matplotlib.patches import Rectangle, Wedge
        from matplotlib.text import Text

        children = [c for c in ax.get_children() if not isinstance(c, Text)]
        lines = [c for c in children if isinstance(c, Line2D)]
        scatters = [c for c in children if isinstance(c, PathCollection)]
        wedges = [c for c in children if isinstance(c, Wedge)]
        bars = [r for c in ax.containers for r in c if isinstance(r, Rectangle)]
        base = {"title": ax.get_title() or None}
        two_d = dict(base, **axis(ax, "x"), **axis(ax, "y"))
        if wedges:
            return dict(base, type="pie", elements=[
                {"label": w.get_label(), "angle": abs(round(w.theta2 - w.theta1, 4)),
                 "radius": num(w.r)} for w in wedges])
        if bars:
            elements = []
            for container in ax.containers:
                group = container.get_label() or ""
                for rect, label in zip(container, two_d["x_tick_labels"] or [""] * len(container)):
                    elements.append({"label": label, "group": group, "value": num(rect.get_height())})
            return dict(two_d, type="bar", elements=elements)
        if scatters and not lines:
            return dict(two_d, type="scatter", elements=[
                {"label": s.get_label(), "points": [[num(x), num(y)] for x, y in s.get_offsets()]}
                for s in scatters])
        if lines and not scatters:
            return dict(two_d, type="line", elements=[
                {"label": l.get_label(),
                 "points": [[num(x), num(y)] for x, y in zip(l.get_xdata(), l.get_ydata())]}
                for l in lines])
        return dict(base, type="unknown", elements=[])

    def figure(fig):
        try:
            axes = fig.get_axes()
            if not axes:
                return None
            if len(axes) == 1:
                return chart_of_axes(axes[0])
            title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else None
            return {"type": "superchart", "title": title,
                    "elements": [chart_of_axes(ax) for ax in axes]}
        except Exception:
            # A chart we cannot read must never hide the image itself.
            return None

    # Matched in __call__ rather than registered as type printers: matplotlib's inline
    # backend removes every Figure printer when pyplot is imported, and pandas' DataFrame
    # has changed modules between versions. sys.modules keeps both imports lazy.
    def instance_of(obj, module, name):
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod else None
        return cls is not None and isinstance(obj, cls)

    class DataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict,)

        def __call__(self, obj):
            if self.enabled and instance_of(obj, "pandas", "DataFrame"):
                return dataframe(obj)
            return None

    class ChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict,)

        def __call__(self, obj):
            if self.enabled and instance_of(obj, "matplotlib.figure", "Figure"):
                return figure(obj)
            return None

    formatters = ip.display_formatter.formatters
    formatters["e2b/data"] = DataFormatter(parent=ip.display_formatter)
    formatters["e2b/chart"] = ChartFormatter(parent=ip.display_formatter)

    # IPython's default (0) commits each cell's input to history.sqlite from a thread while
    # the cell's reply is on its way: under gVisor ~2 ms of every run_code, far more on a
    # busy disk. The session's history (In, _ih, %history) lives in memory either way; the
    # file gets the batch when it fills and at the kernel's exit.
    ip.history_manager.db_cache_size = 100

    # ipykernel sleeps 0.5 ms (~0.7 ms under gVisor) before each execute_reply, a stopgap
    # for clients that stop reading at the reply; silo-interpreter reads on to `idle`.
    kernel = getattr(ip, "kernel", None)
    if hasattr(kernel, "_execute_sleep"):
        kernel._execute_sleep = 0

    # ipykernel's OutStream.flush() hands a flush to its IOPub thread and waits for it, even
    # with nothing written: six times per cell (around the result and before the reply),
    # ~0.75 ms each under gVisor. With nothing buffered and no echo stream that flush sends
    # nothing, and every later IOPub message (the result, `idle`) goes after any output
    # already taken for sending anyway (queued behind it on that thread, or, from silo's
    # launcher, sent under the lock its flushes hold), so the wait is skipped. Attributes this ipykernel
    # lacks make the condition false: the original flush then runs.
    try:
        from ipykernel.iostream import OutStream
    except ImportError:
        return
    flush = OutStream.flush

    def flush_if_written(self):
        if not getattr(self, "_buffers", True) and getattr(self, "echo", True) is None:
            return
        flush(self)

    OutStream.flush = flush_if_written


try:
    __silo_setup()
finally:
    del __silo_setup
