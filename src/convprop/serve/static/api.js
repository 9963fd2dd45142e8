// The server's JSON endpoints (docs/serve.md) and its stream of training states.

// GET path, or POST body as JSON; the answer's JSON, or an Error with the server's one-line message.
export async function api(path, body) {
  const init = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

// Server-sent events of path: onMessage(the parsed JSON of each).
export function listen(path, onMessage) {
  const events = new EventSource(path);
  events.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  return events;
}
