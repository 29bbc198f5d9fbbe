// The dashboard's calls: silo's REST API (X-API-Key) and, through silo's proxy, the
// sandbox's own agent (envd's Connect-JSON, with the sandbox's access token).

const KEY = "silo.apiKey";

export const apiKey = () => sessionStorage.getItem(KEY) || "";
export const setApiKey = (key) => sessionStorage.setItem(KEY, key);
export const logout = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function check(res) {
  if (res.ok) return res;
  let message = `${res.status} ${res.statusText}`;
  try {
    message = (await res.json()).message || message;
  } catch {}
  throw new ApiError(res.status, message);
}

export async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { "X-API-Key": apiKey(), ...(options.headers || {}) },
  });
  await check(res);
  return res.status === 204 ? null : res.json();
}

/** A call to the sandbox's agent (envd), unary Connect-JSON. */
export async function envd(sandbox, rpc, body) {
  const res = await fetch(`/${rpc}`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "Connect-Protocol-Version": "1",
      "E2b-Sandbox-Id": sandbox.sandboxID,
      "E2b-Sandbox-Port": "49983",
      ...(sandbox.envdAccessToken ? { "X-Access-Token": sandbox.envdAccessToken } : {}),
    },
    body: JSON.stringify(body),
  });
  await check(res);
  return res.json();
}

/** Download a file of the sandbox (as the default user). */
export async function download(sandbox, path) {
  const res = await fetch(`/files?path=${encodeURIComponent(path)}`, {
    headers: {
      "E2b-Sandbox-Id": sandbox.sandboxID,
      "E2b-Sandbox-Port": "49983",
      ...(sandbox.envdAccessToken ? { "X-Access-Token": sandbox.envdAccessToken } : {}),
    },
  });
  await check(res);
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = path.split("/").pop();
  a.click();
  URL.revokeObjectURL(url);
}

export function terminalUrl(id, cols, rows) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = encodeURIComponent(apiKey());
  return `${scheme}://${location.host}/sandboxes/${id}/terminal?cols=${cols}&rows=${rows}&api_key=${key}`;
}
