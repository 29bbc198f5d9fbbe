// silo's dashboard: sandboxes (live), a sandbox's page (terminal, timeline and logs,
// metrics, processes, files), templates with their builds, and killed sandboxes' history.
// Routes live in the URL's fragment: #/, #/sandbox/ID, #/templates, #/templates/NAME,
// #/history.

import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal as XTerm } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import { api, apiKey, ApiError, download, envd, logout, setApiKey, terminalUrl } from "./api.js";

/** `fn` now and every `ms` while mounted; its result, or the error it threw. */
function usePoll(fn, ms, deps = []) {
  const [state, setState] = useState({ data: null, error: null });
  useEffect(() => {
    let live = true;
    const tick = () =>
      fn().then(
        (data) => live && setState({ data, error: null }),
        (error) => live && setState((s) => ({ data: s.data, error })),
      );
    tick();
    const timer = ms ? setInterval(tick, ms) : null;
    return () => {
      live = false;
      if (timer) clearInterval(timer);
    };
  }, deps);
  return state;
}

function useRoute() {
  const [hash, setHash] = useState(location.hash || "#/");
  useEffect(() => {
    const on = () => setHash(location.hash || "#/");
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash.slice(1).split("/").filter(Boolean).map(decodeURIComponent);
}

const time = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const mib = (bytes) => `${(bytes / 1048576).toFixed(0)} MiB`;
const Err = ({ error }) => (error ? <div class="error">{String(error.message || error)}</div> : null);
const State = ({ state }) => <span class={`state ${state}`}>{state}</span>;

function Login({ onLogin }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    setApiKey(key.trim());
    try {
      await api("/v2/sandboxes?limit=1");
      onLogin();
    } catch (err) {
      logout();
      setError(err instanceof ApiError && err.status === 401 ? "That key is not valid: `silo keys` prints the server's keys." : err);
    }
  };
  return (
    <form class="login card" onSubmit={submit}>
      <h1>silo</h1>
      <label for="api-key">API key</label>
      <input id="api-key" type="password" placeholder="e2b_…" value={key} onInput={(e) => setKey(e.target.value)} autofocus />
      <button class="primary" type="submit">Log in</button>
      <Err error={error} />
    </form>
  );
}

function SandboxTable({ sandboxes }) {
  return (
    <table>
      <thead>
        <tr><th>Sandbox</th><th>Template</th><th>State</th><th>Started</th><th>Ends</th><th>Resources</th><th>Metadata</th></tr>
      </thead>
      <tbody>
        {sandboxes.map((s) => (
          <tr class="link" key={s.sandboxID} onClick={() => (location.hash = `#/sandbox/${s.sandboxID}`)}>
            <td class="mono">{s.sandboxID}</td>
            <td>{s.templateID}</td>
            <td><State state={s.state} /></td>
            <td>{time(s.startedAt)}</td>
            <td>{time(s.endAt)}</td>
            <td>{s.cpuCount} CPU, {s.memoryMB} MiB</td>
            <td class="mono">{Object.entries(s.metadata || {}).map(([k, v]) => `${k}=${v}`).join(" ")}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

// The most sandboxes one answer of GET /v2/sandboxes holds (E2B's page size).
const PAGE = 100;

function Newest({ data }) {
  return data && data.length === PAGE ? <p class="muted">Showing the newest {PAGE}.</p> : null;
}

function Sandboxes() {
  const [state, setState] = useState("running,paused");
  const [template, setTemplate] = useState("");
  const [metadata, setMetadata] = useState("");
  const { data, error } = usePoll(() => {
    const q = new URLSearchParams({ state });
    if (template) q.set("template", template);
    if (metadata.includes("=")) q.set("metadata", metadata.trim());
    return api(`/v2/sandboxes?${q}`);
  }, 2000, [state, template, metadata]);
  const templates = usePoll(() => api("/templates"), 0).data || [];
  return (
    <>
      <h1>Sandboxes</h1>
      <div class="filters">
        <select value={state} onChange={(e) => setState(e.target.value)}>
          <option value="running,paused">running and paused</option>
          <option value="running">running</option>
          <option value="paused">paused</option>
        </select>
        <select value={template} onChange={(e) => setTemplate(e.target.value)}>
          <option value="">any template</option>
          {templates.map((t) => <option value={t.templateID}>{t.templateID}</option>)}
        </select>
        <input placeholder="metadata key=value" value={metadata} onInput={(e) => setMetadata(e.target.value)} />
      </div>
      <Err error={error} />
      {data && (data.length ? <SandboxTable sandboxes={data} /> : <p class="muted">No sandboxes. Create one with the E2B SDK or `silo sandbox create`.</p>)}
      <Newest data={data} />
    </>
  );
}

function History() {
  const { data, error } = usePoll(() => api(`/v2/sandboxes?state=killed&limit=${PAGE}`), 5000);
  return (
    <>
      <h1>Killed sandboxes</h1>
      <p class="muted">Their timelines, logs and metrics stay readable for the server's retention window.</p>
      <Err error={error} />
      {data && <SandboxTable sandboxes={data} />}
      <Newest data={data} />
    </>
  );
}

function Chart({ label, points, max, format }) {
  // Not `h`: that is the JSX factory's name here.
  const width = 400, height = 90;
  if (!points.length) return <div class="card"><b>{label}</b><p class="muted">No samples yet.</p></div>;
  const top = Math.max(max, ...points.map((p) => p.v), 1e-9);
  const x = (i) => (points.length === 1 ? width : (i / (points.length - 1)) * width);
  const y = (v) => height - (v / top) * (height - 6) - 3;
  const line = points.map((p, i) => `${x(i).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  return (
    <div class="card">
      <b>{label}</b> <span class="muted">{format(points[points.length - 1].v)}</span>
      <svg class="chart" viewBox={`0 0 ${width} ${height}`} preserveAspectRatio="none">
        <polyline points={line} fill="none" stroke="#2f6feb" stroke-width="2" vector-effect="non-scaling-stroke" />
      </svg>
    </div>
  );
}

function Metrics({ id }) {
  const { data, error } = usePoll(() => api(`/sandboxes/${id}/metrics`), 5000, [id]);
  const m = data || [];
  const last = m[m.length - 1];
  return (
    <>
      <Err error={error} />
      <div class="grid">
        <Chart label="CPU" points={m.map((s) => ({ v: s.cpuUsedPct }))} max={100} format={(v) => `${v.toFixed(1)} %`} />
        <Chart label="Memory" points={m.map((s) => ({ v: s.memUsed }))} max={last ? last.memTotal : 0} format={(v) => `${mib(v)} of ${last ? mib(last.memTotal) : "?"}`} />
        <Chart label="Disk" points={m.map((s) => ({ v: s.diskUsed }))} max={last ? last.diskTotal : 0} format={(v) => `${mib(v)} of ${last ? mib(last.diskTotal) : "?"}`} />
      </div>
    </>
  );
}

function Timeline({ id }) {
  // The newest entries (backward: newest first), shown oldest first.
  const { data, error } = usePoll(() => api(`/v2/sandboxes/${id}/logs?direction=backward&limit=2000`), 3000, [id]);
  const logs = data ? data.logs.slice().reverse() : [];
  const newest = logs.length ? `${logs.length} ${logs[logs.length - 1].timestamp}` : "";
  const box = useRef();
  useEffect(() => {
    if (box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [newest]);
  return (
    <>
      <Err error={error} />
      <div class="log" ref={box} data-testid="timeline">
        {logs.map((e) => (
          <div class={e.fields.type === "lifecycle" ? "life" : e.level}>
            {new Date(e.timestamp).toLocaleTimeString()} {e.message}
          </div>
        ))}
      </div>
    </>
  );
}

function Processes({ sandbox }) {
  const [tick, setTick] = useState(0);
  const { data, error } = usePoll(() => envd(sandbox, "process.Process/List", {}), 3000, [sandbox.sandboxID, tick]);
  const kill = async (pid) => {
    await envd(sandbox, "process.Process/SendSignal", { process: { pid }, signal: "SIGNAL_SIGKILL" });
    setTick(tick + 1);
  };
  return (
    <>
      <Err error={error} />
      <table>
        <thead><tr><th>PID</th><th>Command</th><th>Tag</th><th></th></tr></thead>
        <tbody>
          {(data ? data.processes || [] : []).map((p) => (
            <tr>
              <td>{p.pid}</td>
              <td class="mono">{[p.config.cmd, ...(p.config.args || [])].join(" ")}</td>
              <td>{p.tag || ""}</td>
              <td><button class="danger" onClick={() => kill(p.pid)}>Kill</button></td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function Files({ sandbox }) {
  const [path, setPath] = useState("/home/user");
  const [error, setError] = useState(null);
  const listing = usePoll(() => envd(sandbox, "filesystem.Filesystem/ListDir", { path, depth: 1 }), 0, [sandbox.sandboxID, path]);
  const up = path === "/" ? null : path.replace(/\/[^/]+\/?$/, "") || "/";
  const entries = (listing.data ? listing.data.entries || [] : []).slice().sort((a, b) => a.name.localeCompare(b.name));
  return (
    <>
      <div class="filters">
        <input class="mono" value={path} onChange={(e) => setPath(e.target.value)} size="50" />
        {up && <button onClick={() => setPath(up)}>Up</button>}
      </div>
      <Err error={listing.error || error} />
      <table>
        <thead><tr><th>Name</th><th>Type</th><th>Size</th><th>Modified</th><th></th></tr></thead>
        <tbody>
          {entries.map((e) => {
            const dir = e.type === "FILE_TYPE_DIRECTORY";
            return (
              <tr class={dir ? "link" : ""} onClick={() => dir && setPath(e.path)}>
                <td class="mono">{e.name}{dir ? "/" : ""}</td>
                <td>{dir ? "directory" : "file"}</td>
                <td>{dir ? "" : e.size}</td>
                <td>{time(e.modifiedTime)}</td>
                <td>{!dir && <button onClick={() => download(sandbox, e.path).catch(setError)}>Download</button>}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </>
  );
}

function Terminal({ id }) {
  const node = useRef();
  const [status, setStatus] = useState("connecting…");
  useEffect(() => {
    const term = new XTerm({ fontSize: 13, cursorBlink: true, convertEol: false });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(node.current);
    fit.fit();
    const ws = new WebSocket(terminalUrl(id, term.cols, term.rows));
    ws.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    ws.onopen = () => { setStatus("connected"); term.focus(); };
    ws.onmessage = (e) => term.write(new Uint8Array(e.data));
    ws.onclose = (e) => setStatus(`closed${e.reason ? `: ${e.reason}` : ""}`);
    const input = term.onData((data) => ws.readyState === 1 && ws.send(encoder.encode(data)));
    const resize = term.onResize(({ cols, rows }) => ws.readyState === 1 && ws.send(JSON.stringify({ resize: { cols, rows } })));
    const onWindow = () => fit.fit();
    addEventListener("resize", onWindow);
    return () => {
      removeEventListener("resize", onWindow);
      input.dispose();
      resize.dispose();
      ws.close();
      term.dispose();
    };
  }, [id]);
  return (
    <>
      <p class="muted" data-testid="terminal-status">Terminal: {status}</p>
      <div class="term" ref={node} data-testid="terminal" />
    </>
  );
}

function Sandbox({ id }) {
  const [tab, setTab] = useState("terminal");
  const [tick, setTick] = useState(0);
  const [actionError, setActionError] = useState(null);
  const { data: sandbox, error } = usePoll(() => api(`/sandboxes/${id}`), 3000, [id, tick]);
  const gone = error instanceof ApiError && error.status === 404;
  const act = (fn) => fn().then(() => setTick(tick + 1), setActionError);
  const running = sandbox && sandbox.state === "running" && !gone;
  const tabs = running ? ["terminal", "timeline", "metrics", "processes", "files"] : ["timeline", "metrics"];
  const shown = tabs.includes(tab) ? tab : "timeline";
  return (
    <>
      <h1><span class="mono">{id}</span> {sandbox && <State state={gone ? "killed" : sandbox.state} />}</h1>
      {sandbox && !gone && (
        <div class="card">
          {sandbox.templateID} · {sandbox.cpuCount} CPU · {sandbox.memoryMB} MiB · disk {sandbox.diskSizeMB} MiB · started {time(sandbox.startedAt)} · ends {time(sandbox.endAt)}
          <div class="filters" style="margin: 10px 0 0">
            {sandbox.state === "running" && <button onClick={() => act(() => api(`/sandboxes/${id}/pause`, { method: "POST" }))}>Pause</button>}
            {sandbox.state === "paused" && <button onClick={() => act(() => api(`/sandboxes/${id}/connect`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }))}>Resume</button>}
            <button class="danger" onClick={() => act(() => api(`/sandboxes/${id}`, { method: "DELETE" }))}>Kill</button>
          </div>
        </div>
      )}
      {gone && <p class="muted">This sandbox is not running any more; its timeline, logs and metrics remain.</p>}
      <Err error={actionError || (gone ? null : error)} />
      <div class="tabs">
        {tabs.map((t) => <button class={t === shown ? "on" : ""} onClick={() => setTab(t)}>{t}</button>)}
      </div>
      {shown === "terminal" && <Terminal id={id} />}
      {shown === "timeline" && <Timeline id={id} />}
      {shown === "metrics" && <Metrics id={id} />}
      {shown === "processes" && sandbox && <Processes sandbox={sandbox} />}
      {shown === "files" && sandbox && <Files sandbox={sandbox} />}
    </>
  );
}

function Templates() {
  const { data, error } = usePoll(() => api("/templates"), 5000);
  return (
    <>
      <h1>Templates</h1>
      <Err error={error} />
      <table>
        <thead><tr><th>Name</th><th>Aliases</th><th>Status</th><th>Resources</th><th>Builds</th><th>Updated</th></tr></thead>
        <tbody>
          {(data || []).map((t) => (
            <tr class="link" onClick={() => (location.hash = `#/templates/${encodeURIComponent(t.templateID)}`)}>
              <td>{t.templateID}</td><td>{t.aliases.join(", ")}</td><td>{t.buildStatus}</td>
              <td>{t.cpuCount} CPU, {t.memoryMB} MiB</td><td>{t.buildCount}</td><td>{time(t.updatedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function BuildLog({ template, build }) {
  const { data, error } = usePoll(() => api(`/templates/${encodeURIComponent(template)}/builds/${build}/status?logsOffset=0`), 3000, [template, build]);
  return (
    <>
      <Err error={error} />
      {data && data.reason && <div class="error">{data.reason.message}</div>}
      <div class="log">{(data ? data.logEntries : []).map((e) => <div class={e.level}>{e.message}</div>)}</div>
    </>
  );
}

function Template({ name }) {
  const { data, error } = usePoll(() => api(`/templates/${encodeURIComponent(name)}`), 5000, [name]);
  const [build, setBuild] = useState(null);
  return (
    <>
      <h1>Template {name}</h1>
      <Err error={error} />
      {data && (
        <>
          <div class="card">{data.cpuCount} CPU · {data.memoryMB} MiB · disk {data.diskSizeMB} MiB · aliases: {data.aliases.join(", ") || "none"}</div>
          <h2>Builds</h2>
          {(data.builds || []).length === 0 && <p class="muted">Built on this host (no build through the API).</p>}
          <table>
            <thead><tr><th>Build</th><th>Status</th><th>Started</th><th>Finished</th></tr></thead>
            <tbody>
              {(data.builds || []).map((b) => (
                <tr class="link" onClick={() => setBuild(b.buildID)}>
                  <td class="mono">{b.buildID}</td><td>{b.status}</td><td>{time(b.createdAt)}</td><td>{time(b.finishedAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {build && <><h2>Log of {build}</h2><BuildLog template={name} build={build} /></>}
        </>
      )}
    </>
  );
}

function App() {
  const [loggedIn, setLoggedIn] = useState(!!apiKey());
  const route = useRoute();
  if (!loggedIn) return <Login onLogin={() => setLoggedIn(true)} />;
  const [page, arg] = route;
  const nav = (href, label, on) => <a href={href} class={on ? "on" : ""}>{label}</a>;
  return (
    <>
      <header>
        <b>silo</b>
        {nav("#/", "Sandboxes", !page || page === "sandbox")}
        {nav("#/templates", "Templates", page === "templates")}
        {nav("#/history", "History", page === "history")}
        <a class="right" href="#/" onClick={() => { logout(); setLoggedIn(false); }}>Log out</a>
      </header>
      <main>
        {!page && <Sandboxes />}
        {page === "sandbox" && <Sandbox id={arg} />}
        {page === "templates" && (arg ? <Template name={arg} /> : <Templates />)}
        {page === "history" && <History />}
      </main>
    </>
  );
}

render(<App />, document.getElementById("app"));
