// The aexec UI: renders the JSON API in the browser.  Every string from the server is put
// in the page as text (textContent, never innerHTML): step names, errors and log lines are
// attacker-controlled.  Live updates arrive over Server-Sent Events read with fetch, so
// that the bearer token travels in a header and Last-Event-ID resumes a broken stream.
"use strict";

const STATUSES = ["pending", "queued", "running", "retrying", "succeeded", "failed", "skipped", "cancelled"];
const COLORS = {
  pending: "#c3c8d1", queued: "#8fb3e8", running: "#2f7de1", retrying: "#e5a00d",
  succeeded: "#2e9d57", failed: "#d83b3b", skipped: "#a3a3a3", cancelled: "#7c5cc4",
};
const COLLAPSE = 8;          // a layer's steps of one name form one node past this many
const TABLE_LIMIT = 300;     // steps listed in the run page's table, at most
const LOG_LIMIT = 1000;      // event log lines kept on the run page
const ROOT = document.documentElement.dataset.root || "";  // where the app is mounted

// -- token and API ------------------------------------------------------------------------

(function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("aexec-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function token() { return sessionStorage.getItem("aexec-token"); }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(ROOT + path, opts);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    if (response.status === 401) askToken();
    throw new ApiError(response.status, (body && body.error) || response.statusText);
  }
  return body;
}

function post(path, value) {
  return api(path, {
    method: "POST", body: JSON.stringify(value || {}),
    headers: { "Content-Type": "application/json" },
  });
}

// A Server-Sent Events stream read with fetch: reconnects with Last-Event-ID after a break.
function stream(path, handlers) {
  const state = { closed: false, lastId: null, controller: null };
  const live = document.getElementById("live");
  async function connect(delay) {
    while (!state.closed) {
      state.controller = new AbortController();
      const extra = { Accept: "text/event-stream" };
      if (state.lastId !== null) extra["Last-Event-ID"] = state.lastId;
      try {
        const response = await fetch(ROOT + path, { headers: headers(extra), signal: state.controller.signal });
        if (response.status === 401) { askToken(); return; }
        if (!response.ok) throw new Error(response.statusText);
        live.classList.add("on");
        delay = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            if (dispatch(block)) { state.closed = true; live.classList.remove("on"); return; }
          }
        }
      } catch (e) {
        if (state.closed) return;
      }
      live.classList.remove("on");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  function dispatch(block) {
    let event = "message", data = "", id = null;
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data += value;
      else if (field === "id") id = value;
    }
    if (id !== null) state.lastId = id;
    if (!data) return false;
    const payload = JSON.parse(data);
    if (event === "end") { if (handlers.end) handlers.end(payload); return true; }
    if (handlers.event) handlers.event(event, payload);
    return false;
  }
  connect(500);
  return { close() { state.closed = true; if (state.controller) state.controller.abort(); } };
}

// -- DOM helpers ----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "href" && String(value).startsWith("/")) node.setAttribute(name, ROOT + value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(status) { return el("span", { class: "badge " + status, dataset: { status } }, status); }

function seconds(value) {
  if (value === null || value === undefined) return "-";
  if (value < 0.1) return value.toFixed(3) + " s";
  if (value < 10) return value.toFixed(2) + " s";
  if (value < 120) return value.toFixed(1) + " s";
  const m = Math.floor(value / 60), s = Math.floor(value % 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m` : `${m}m${String(s).padStart(2, "0")}s`;
}

function when(ts, precise) {
  if (ts === null || ts === undefined) return "-";
  const d = new Date(ts * 1000);
  if (precise) return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  return d.toLocaleString([], { hour12: false });
}

function notice(text, ok) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = ok ? "notice ok" : "notice";
  box.hidden = !text;
}

function askToken() {
  const main = document.getElementById("main");
  if (document.getElementById("token-form")) return;
  const input = el("input", { type: "password", id: "token-input", size: 40, placeholder: "AEXEC_UI_TOKEN" });
  const form = el("form", { id: "token-form", class: "filters", on: { submit(e) {
    e.preventDefault();
    sessionStorage.setItem("aexec-token", input.value.trim());
    location.reload();
  } } }, el("label", {}, "This server needs its token", input), el("button", { type: "submit" }, "Use token"));
  main.prepend(form);
}

function eventText(event) {
  const data = event.data || {};
  const parts = [];
  if (data.error && typeof data.error === "object") parts.push(`${data.error.type}: ${data.error.message}`);
  else if (data.error) parts.push(String(data.error));
  if (typeof data.fraction === "number") parts.push(Math.round(data.fraction * 100) + "%");
  for (const name of ["message", "line", "text"]) if (data[name]) parts.push(String(data[name]));
  for (const [k, v] of Object.entries(data)) {
    if (["error", "fraction", "message", "line", "text", "started_at"].includes(k)) continue;
    parts.push(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  return parts.join(" ");
}

function errorBlock(error) {
  return el("div", { class: "error" },
    el("strong", { class: "error-message" }, `${error.type}: ${error.message}`),
    error.traceback ? el("details", {}, el("summary", {}, "traceback"), el("pre", { class: "traceback" }, error.traceback)) : null);
}

// -- runs list --------------------------------------------------------------------------------

function runsPage(main) {
  const params = new URLSearchParams(location.search);
  const status = el("select", { name: "status" }, el("option", { value: "" }, "any"),
    ...["pending", "running", "succeeded", "failed", "cancelled"].map((s) => el("option", { value: s, selected: params.get("status") === s }, s)));
  const pipeline = el("input", { name: "pipeline", value: params.get("pipeline") || "", placeholder: "pipeline name" });
  const tag = el("input", { name: "tag", value: params.get("tag") || "", placeholder: "key=value" });
  const form = el("form", { class: "filters", method: "get", action: ROOT + "/" },
    el("label", {}, "status", status), el("label", {}, "pipeline", pipeline), el("label", {}, "tag", tag),
    el("button", { type: "submit" }, "Filter"));
  const body = el("tbody", { id: "runs-body" });
  const table = el("table", { id: "runs" }, el("thead", {}, el("tr", {},
    ...["run", "pipeline", "status", "created", "duration", "steps", "tags"].map((h) => el("th", {}, h)))), body);
  const pager = el("div", { class: "pager" });
  main.replaceChildren(el("h1", {}, "Runs"), form, table, pager);
  const query = new URLSearchParams();
  for (const name of ["status", "pipeline", "tag", "offset", "limit"]) if (params.get(name)) query.set(name, params.get(name));
  function render(page) {
    body.replaceChildren(...page.runs.map((run) => el("tr", { dataset: { run: run.run_id, status: run.status } },
      el("td", { class: "mono" }, el("a", { href: "/runs/" + encodeURIComponent(run.run_id) }, run.run_id.slice(0, 12))),
      el("td", {}, run.pipeline), el("td", {}, badge(run.status)), el("td", {}, when(run.created_at)),
      el("td", {}, seconds(run.duration)), el("td", { class: "counts" }, counts(run.steps)),
      el("td", { class: "tags" }, tagList(run.tags)))));
    if (!page.runs.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no runs")));
    const link = (offset, text) => {
      const q = new URLSearchParams(query); q.set("offset", offset);
      return el("a", { href: "/?" + q.toString() }, text);
    };
    pager.replaceChildren(page.offset > 0 ? link(Math.max(0, page.offset - page.limit), "← newer") : "",
      el("span", { class: "muted" }, `runs ${page.offset + 1}–${page.offset + page.runs.length}`),
      page.next !== null ? link(page.next, "older →") : "");
  }
  stream("/api/runs/stream?" + query.toString(), { event(kind, page) { if (kind === "runs") render(page); } });
}

function tagList(tags) {
  return Object.entries(tags || {}).map(([k, v]) =>
    el("a", { class: "tag", href: "/?tag=" + encodeURIComponent(`${k}=${v}`) }, `${k}=${v}`));
}

function counts(steps) {
  const total = Object.values(steps || {}).reduce((a, b) => a + b, 0);
  const done = steps.succeeded || 0;
  const parts = [el("span", {}, `${done}/${total}`)];
  for (const status of ["running", "failed", "retrying", "skipped", "cancelled"]) {
    if (steps[status]) parts.push(el("span", { class: "muted" }, `${steps[status]} ${status}`));
  }
  return parts;
}

// -- run page ------------------------------------------------------------------------------------

async function runPage(main, runId) {
  const [report, plan] = await Promise.all([
    api("/api/runs/" + encodeURIComponent(runId)),
    api("/api/runs/" + encodeURIComponent(runId) + "/plan"),
  ]);
  runId = report.run_id;
  const steps = report.steps;            // key -> row, kept current by the events
  const header = el("dl", { class: "grid", id: "run-header" });
  const cancel = el("button", { class: "danger", id: "cancel", on: { click: () => confirmCancel(runId) } }, "Cancel run");
  const rerun = el("button", { id: "rerun", on: { click: () => confirmRerun(runId) } }, "Rerun from failure");
  const statusBox = el("span", { id: "run-status" });
  const countsBox = el("div", { class: "counts", id: "step-counts" });
  const dag = new Dag(plan, steps, runId);
  const log = el("tbody", { id: "log-body" });
  const outcome = el("div", { id: "outcome" });
  const stepsBody = el("tbody", { id: "steps-body" });
  const timelineBox = el("div", { class: "canvas-box", id: "timeline" });
  const timeline = new Timeline(timelineBox);
  main.replaceChildren(
    el("h1", {}, report.run.pipeline, " ", statusBox),
    el("div", { class: "toolbar" }, cancel, rerun, el("a", { href: "/launch?pipeline=" + encodeURIComponent(report.run.pipeline) }, "launch again")),
    header, el("h2", {}, "Steps"), countsBox, dag.element,
    el("h2", {}, "Timeline by worker"), timelineBox,
    el("h2", {}, "Result"), outcome,
    el("h2", {}, "Step list"), el("table", { id: "steps" }, el("thead", {}, el("tr", {},
      ...["step", "status", "attempts", "worker", "duration", "error"].map((h) => el("th", {}, h)))), stepsBody),
    el("h2", {}, "Event log"), el("div", { class: "log" }, el("table", { id: "log" }, el("thead", {}, el("tr", {},
      ...["time", "event", "step", "attempt", "detail"].map((h) => el("th", {}, h)))), log)));
  let run = report.run, result = report.result, finished = false;

  function renderHeader() {
    statusBox.replaceChildren(badge(run.status));
    cancel.disabled = ["succeeded", "failed", "cancelled"].includes(run.status);
    rerun.disabled = !["failed", "cancelled"].includes(run.status);  // what failed runs again
    const rows = [["run", run.run_id], ["pipeline", run.pipeline], ["priority", run.priority],
      ["params", JSON.stringify(run.params)], ["tags", tagList(run.tags)], ["created", when(run.created_at)],
      ["started", when(run.started_at)], ["finished", when(run.finished_at)], ["duration", seconds(run.duration)]];
    if (run.parent) rows.push(["parent", el("a", { id: "parent-run", href: ROOT + "/runs/" + encodeURIComponent(run.parent) }, run.parent)]);
    if (run.error) rows.push(["error", run.error]);
    header.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, v)]));
  }
  function renderCounts() {
    const n = {};
    for (const row of Object.values(steps)) n[row.status] = (n[row.status] || 0) + 1;
    countsBox.replaceChildren(...STATUSES.filter((s) => n[s]).map((s) =>
      el("span", { dataset: { count: s } }, badge(s), " ", n[s])));
  }
  function renderSteps() {
    const keys = Object.keys(steps);
    const shown = keys.length <= TABLE_LIMIT ? keys
      : keys.filter((k) => !["pending", "succeeded", "skipped"].includes(steps[k].status)).slice(0, TABLE_LIMIT);
    stepsBody.replaceChildren(...shown.map((key) => {
      const row = steps[key];
      const took = row.finished_at && row.started_at ? row.finished_at - row.started_at : null;
      return el("tr", { dataset: { step: key, status: row.status } },
        el("td", { class: "mono" }, el("a", { href: `/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(key)}` }, key)),
        el("td", {}, badge(row.status)), el("td", {}, row.attempts), el("td", {}, row.worker || "-"),
        el("td", {}, seconds(took)), el("td", { class: "step-error" }, row.error ? `${row.error.type}: ${row.error.message}` : ""));
    }));
    if (keys.length > shown.length) stepsBody.append(el("tr", {}, el("td", { colspan: 6, class: "muted" },
      `${keys.length - shown.length} more steps (pending, succeeded or skipped): see the graph`)));
  }
  function renderOutcome() {
    const failed = Object.entries(steps).filter(([, s]) => s.status === "failed" && s.error);
    const parts = [];
    if (run.status === "succeeded") parts.push(el("pre", { id: "result" }, JSON.stringify(result, null, 2)));
    else if (!finished) parts.push(el("p", { class: "muted" }, "the run has not ended"));
    if (run.error) parts.push(el("p", { class: "run-error" }, run.error));
    for (const [key, s] of failed) parts.push(el("h3", {}, "step ", el("a", { href: `/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(key)}` }, key)), errorBlock(s.error));
    outcome.replaceChildren(...parts);
  }
  function addLog(event) {
    log.append(el("tr", { dataset: { kind: event.kind, seq: event.seq } },
      el("td", { class: "mono" }, when(event.ts, true)), el("td", {}, event.kind), el("td", { class: "mono" }, event.step || "-"),
      el("td", {}, event.attempt || ""), el("td", { class: "mono event-detail" }, eventText(event))));
    while (log.childElementCount > LOG_LIMIT) log.firstElementChild.remove();
  }
  function apply(event) {
    const row = event.step !== null ? steps[event.step] : null;
    const status = STEP_STATUS[event.kind];
    if (row && status && event.attempt >= row.attempts) {
      row.status = status; row.attempts = event.attempt;
      if (event.kind === "step_started") { row.started_at = event.ts; row.worker = event.data.worker || row.worker; }
      if (["step_succeeded", "step_failed"].includes(event.kind)) {
        row.finished_at = event.ts;  // a quick step's start comes with its end
        if (typeof event.data.started_at === "number") row.started_at = event.data.started_at;
        row.worker = event.data.worker || row.worker;
      }
      if (event.data && typeof event.data.error === "object" && event.data.error) row.error = event.data.error;
      if (event.kind === "step_succeeded") row.error = null;
    }
    const runStatus = RUN_STATUS[event.kind];
    if (runStatus) {
      run.status = runStatus;
      if (event.kind === "run_started") run.started_at = event.ts;
      if (event.kind === "run_failed" || event.kind === "run_cancelled") run.error = event.data.error || run.error;
    }
  }

  // Initial render, then the log: its last page at once, new events as they are recorded.
  renderHeader(); renderCounts(); renderSteps(); renderOutcome(); dag.draw();
  const recent = await api(`/api/runs/${encodeURIComponent(runId)}/events?after=${Math.max(0, report.last_seq - 200)}`);
  recent.events.forEach(addLog);
  timeline.load(runId);
  document.body.dataset.ready = "1";

  let dirty = false;
  function redraw() {
    dirty = false;
    renderHeader(); renderCounts(); renderSteps(); renderOutcome(); dag.draw();
  }
  async function ended() {
    finished = true;
    const final = await api("/api/runs/" + encodeURIComponent(runId));
    run = final.run; result = final.result;
    Object.assign(steps, final.steps);
    redraw();
    timeline.load(runId);
  }
  if (["succeeded", "failed", "cancelled"].includes(run.status)) { finished = true; renderOutcome(); return; }
  let timelineDue = 0;
  stream(`/api/runs/${encodeURIComponent(runId)}/stream?after=${report.last_seq}`, {
    event(kind, event) {
      apply(event); addLog(event);
      if (!dirty) { dirty = true; requestAnimationFrame(redraw); }
      if (kind === "step_started" || kind === "step_succeeded" || kind === "step_failed") {
        const now = Date.now();
        if (now > timelineDue) { timelineDue = now + 1500; setTimeout(() => timeline.load(runId), 300); }
      }
    },
    end() { ended(); },
  });
}

const STEP_STATUS = {
  step_dispatched: "queued", step_started: "running", step_retrying: "retrying", step_succeeded: "succeeded",
  step_failed: "failed", step_skipped: "skipped", step_cancelled: "cancelled",
};
const RUN_STATUS = { run_started: "running", run_succeeded: "succeeded", run_failed: "failed", run_cancelled: "cancelled" };

function confirmCancel(runId) {
  const dialog = el("dialog", { id: "confirm-cancel" },
    el("p", {}, "Cancel run ", el("code", {}, runId), "? Its unfinished steps are cancelled."),
    el("form", { method: "dialog", class: "toolbar" },
      el("button", { value: "no", class: "plain", id: "cancel-no" }, "Keep running"),
      el("button", { value: "yes", class: "danger", id: "cancel-yes" }, "Cancel the run")));
  document.body.append(dialog);
  dialog.addEventListener("close", async () => {
    const yes = dialog.returnValue === "yes";
    dialog.remove();
    if (!yes) return;
    try {
      await post(`/api/runs/${encodeURIComponent(runId)}/cancel`);
      notice("cancellation requested", true);
    } catch (e) { notice("cannot cancel: " + e.message); }
  });
  dialog.showModal();
}

function confirmRerun(runId) {
  const dialog = el("dialog", { id: "confirm-rerun" },
    el("p", {}, "Rerun ", el("code", {}, runId), " from failure? A new run reuses the outputs of the steps that succeeded and runs the others."),
    el("form", { method: "dialog", class: "toolbar" },
      el("button", { value: "no", class: "plain", id: "rerun-no" }, "Not now"),
      el("button", { value: "yes", id: "rerun-yes" }, "Rerun")));
  document.body.append(dialog);
  dialog.addEventListener("close", async () => {
    const yes = dialog.returnValue === "yes";
    dialog.remove();
    if (!yes) return;
    try {
      const started = await post(`/api/runs/${encodeURIComponent(runId)}/rerun`, { from_failure: true });
      location.href = ROOT + "/runs/" + encodeURIComponent(started.run_id);
    } catch (e) { notice("cannot rerun: " + e.message); }
  });
  dialog.showModal();
}

// -- the DAG: layers of steps, a layer's many same-named steps drawn as one node --------------

class Dag {
  constructor(plan, steps, runId) {
    this.steps = steps; this.runId = runId;
    const layer = new Array(plan.steps.length).fill(0);
    plan.steps.forEach((s, i) => { for (const d of s.deps) layer[i] = Math.max(layer[i], layer[d] + 1); });
    const byLayer = new Map();
    plan.steps.forEach((s, i) => {
      const groups = byLayer.get(layer[i]) || new Map();
      byLayer.set(layer[i], groups);
      const list = groups.get(s.name) || [];
      groups.set(s.name, list); list.push(i);
    });
    this.nodes = []; const nodeOf = new Array(plan.steps.length);
    const W = 160, H = 38, GX = 60, GY = 14;
    let tallest = 0;
    const columns = [...byLayer.keys()].sort((a, b) => a - b).map((l) => {
      const items = [];
      for (const [name, members] of byLayer.get(l)) {
        if (members.length > COLLAPSE) items.push({ label: `${name} ×${members.length}`, members });
        else for (const m of members) items.push({ label: plan.steps[m].key, members: [m] });
      }
      tallest = Math.max(tallest, items.length);
      return items;
    });
    columns.forEach((items, col) => {
      const offset = (tallest - items.length) * (H + GY) / 2;
      items.forEach((item, row) => {
        const node = Object.assign(item, { x: col * (W + GX), y: offset + row * (H + GY), w: W, h: H,
          keys: item.members.map((m) => plan.steps[m].key), deps: new Set() });
        for (const m of item.members) nodeOf[m] = this.nodes.length;
        this.nodes.push(node);
      });
    });
    plan.steps.forEach((s, i) => { for (const d of s.deps) this.nodes[nodeOf[i]].deps.add(nodeOf[d]); });
    this.width = columns.length * (W + GX); this.height = tallest * (H + GY);
    this.canvas = el("canvas", { "aria-label": "step graph" });
    this.tip = el("div", { class: "tooltip" });
    this.picked = el("div", { id: "picked" });
    const legend = el("div", { class: "legend" }, ...STATUSES.map((s) => el("span", {}, el("i", { class: "swatch " + s }), s)));
    this.element = el("div", { id: "dag" }, el("div", { class: "toolbar" },
      el("button", { class: "plain", on: { click: () => this.zoom(1.25) } }, "+"),
      el("button", { class: "plain", on: { click: () => this.zoom(0.8) } }, "−"),
      el("button", { class: "plain", id: "fit", on: { click: () => this.fit() } }, "fit"), legend),
      el("div", { class: "canvas-box" }, this.canvas, this.tip), this.picked);
    this.scale = 1; this.tx = 10; this.ty = 10;
    this.listen();
    new ResizeObserver(() => this.draw()).observe(this.canvas);
    if (this.width > 2000) { this.scale = Math.max(0.5, Math.min(1, 400 / Math.max(this.height, 1))); }
    else requestAnimationFrame(() => this.fit());
  }
  fit() {
    const r = this.canvas.getBoundingClientRect();
    this.scale = Math.max(0.02, Math.min(1.5, (r.width - 20) / Math.max(this.width, 1), (r.height - 20) / Math.max(this.height, 1)));
    this.tx = 10; this.ty = 10; this.draw();
  }
  zoom(factor, cx, cy) {
    const r = this.canvas.getBoundingClientRect();
    cx = cx === undefined ? r.width / 2 : cx; cy = cy === undefined ? r.height / 2 : cy;
    const next = Math.max(0.02, Math.min(4, this.scale * factor));
    this.tx = cx - (cx - this.tx) * next / this.scale; this.ty = cy - (cy - this.ty) * next / this.scale;
    this.scale = next; this.draw();
  }
  listen() {
    const c = this.canvas; let drag = null;
    c.addEventListener("wheel", (e) => { e.preventDefault(); const r = c.getBoundingClientRect(); this.zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top); }, { passive: false });
    c.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty, moved: false }; });
    window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
    c.addEventListener("mousemove", (e) => {
      if (drag && (e.buttons & 1)) {
        this.tx = drag.tx + e.clientX - drag.x; this.ty = drag.ty + e.clientY - drag.y;
        drag.moved = drag.moved || Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 3;
        this.draw(); return;
      }
      const node = this.at(e); const r = c.getBoundingClientRect();
      if (!node) { this.tip.style.display = "none"; return; }
      this.tip.textContent = this.describe(node);
      this.tip.style.display = "block"; this.tip.style.left = (e.clientX - r.left + 12) + "px"; this.tip.style.top = (e.clientY - r.top + 12) + "px";
    });
    c.addEventListener("mouseleave", () => { this.tip.style.display = "none"; });
    c.addEventListener("click", (e) => {
      if (drag && drag.moved) return;
      const node = this.at(e); if (!node) return;
      if (node.keys.length === 1) { location.href = ROOT + `/runs/${encodeURIComponent(this.runId)}/steps/${encodeURIComponent(node.keys[0])}`; return; }
      this.picked.replaceChildren(el("h3", {}, node.label), el("div", { class: "counts" }, ...node.keys.map((k) =>
        el("span", {}, badge(this.steps[k].status), " ", el("a", { href: `/runs/${encodeURIComponent(this.runId)}/steps/${encodeURIComponent(k)}` }, k)))));
    });
  }
  at(e) {
    const r = this.canvas.getBoundingClientRect();
    const x = (e.clientX - r.left - this.tx) / this.scale, y = (e.clientY - r.top - this.ty) / this.scale;
    return this.nodes.find((n) => x >= n.x && x <= n.x + n.w && y >= n.y && y <= n.y + n.h) || null;
  }
  tally(node) {
    const n = {}; for (const k of node.keys) { const s = this.steps[k].status; n[s] = (n[s] || 0) + 1; } return n;
  }
  describe(node) {
    if (node.keys.length === 1) {
      const s = this.steps[node.keys[0]];
      const took = s.finished_at && s.started_at ? seconds(s.finished_at - s.started_at) : "-";
      return `${node.keys[0]}\n${s.status}, attempts ${s.attempts}, ${took}` + (s.worker ? `\non ${s.worker}` : "");
    }
    return node.label + "\n" + Object.entries(this.tally(node)).map(([k, v]) => `${v} ${k}`).join(", ");
  }
  draw() {
    const c = this.canvas, r = c.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
    if (!r.width) return;
    if (c.width !== Math.round(r.width * ratio) || c.height !== Math.round(r.height * ratio)) {
      c.width = Math.round(r.width * ratio); c.height = Math.round(r.height * ratio);
    }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0); g.clearRect(0, 0, r.width, r.height);
    g.setTransform(ratio * this.scale, 0, 0, ratio * this.scale, ratio * this.tx, ratio * this.ty);
    const x0 = -this.tx / this.scale, y0 = -this.ty / this.scale;
    const x1 = x0 + r.width / this.scale, y1 = y0 + r.height / this.scale;
    const visible = this.nodes.filter((n) => n.x + n.w >= x0 - 200 && n.x <= x1 + 200 && n.y + n.h >= y0 && n.y <= y1);
    g.strokeStyle = "#b9c0cc"; g.lineWidth = 1 / Math.max(this.scale, 0.5);
    g.beginPath();
    for (const n of visible) for (const d of n.deps) {
      const m = this.nodes[d];
      const ax = m.x + m.w, ay = m.y + m.h / 2, bx = n.x, by = n.y + n.h / 2;
      g.moveTo(ax, ay); g.bezierCurveTo(ax + 30, ay, bx - 30, by, bx, by);
    }
    g.stroke();
    // What the graph shows, for tests and scripts: its nodes and its steps by status.
    const tally = {};
    for (const s of Object.values(this.steps)) tally[s.status] = (tally[s.status] || 0) + 1;
    c.dataset.nodes = this.nodes.length;
    c.dataset.view = `${this.scale.toFixed(3)} ${Math.round(this.tx)} ${Math.round(this.ty)}`;
    c.dataset.drawn = STATUSES.filter((s) => tally[s]).map((s) => `${s}:${tally[s]}`).join(",");
    const text = this.scale > 0.45;
    g.font = "12px system-ui, sans-serif"; g.textBaseline = "middle";
    for (const n of visible) {
      if (n.keys.length === 1) {
        g.fillStyle = COLORS[this.steps[n.keys[0]].status] || COLORS.pending;
        g.fillRect(n.x, n.y, n.w, n.h);
      } else {
        const tally = this.tally(n); let x = n.x;
        for (const s of STATUSES) if (tally[s]) {
          const w = n.w * tally[s] / n.keys.length; g.fillStyle = COLORS[s]; g.fillRect(x, n.y, w, n.h); x += w;
        }
      }
      if (text) {
        g.fillStyle = "#fff";
        const label = n.label.length > 22 ? n.label.slice(0, 21) + "…" : n.label;
        g.fillText(label, n.x + 6, n.y + (n.keys.length === 1 ? 12 : n.h / 2));
        if (n.keys.length === 1) {
          const s = this.steps[n.keys[0]];
          const took = s.finished_at && s.started_at ? seconds(s.finished_at - s.started_at) : "";
          g.fillText(`#${s.attempts} ${took}`, n.x + 6, n.y + 27);
        }
      }
    }
  }
}

// -- the timeline: attempts by worker --------------------------------------------------------

class Timeline {
  constructor(box) {
    this.canvas = el("canvas", { "aria-label": "timeline" }); this.tip = el("div", { class: "tooltip" });
    box.append(this.canvas, this.tip); this.bars = []; this.lanes = [];
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => { this.tip.style.display = "none"; });
  }
  async load(runId) {
    try { this.bars = (await api(`/api/runs/${encodeURIComponent(runId)}/timeline`)).attempts; } catch (e) { return; }
    // Each worker gets as many lanes as it ran attempts at once (at most 12): a bar goes on
    // its worker's first lane that is free when it starts.
    const lanes = [];
    const byStart = [...this.bars].sort((a, b) => a.start - b.start);
    for (const bar of byStart) {
      const mine = lanes.filter((l) => l.worker === bar.worker);
      let lane = mine.find((l) => l.end <= bar.start);
      if (!lane && mine.length >= 12) lane = mine.reduce((a, b) => (a.end <= b.end ? a : b));
      if (!lane) { lane = { worker: bar.worker, end: 0, first: mine.length === 0 }; lanes.push(lane); }
      lane.end = bar.end || Infinity; bar.lane = lane;
    }
    lanes.sort((a, b) => a.worker.localeCompare(b.worker));
    this.lanes = lanes;
    this.draw();
  }
  geometry() {
    const r = this.canvas.getBoundingClientRect();
    const start = Math.min(...this.bars.map((b) => b.start));
    const end = Math.max(...this.bars.map((b) => b.end || Date.now() / 1000));
    const left = 150, lane = Math.max(2, Math.min(28, (r.height - 20) / Math.max(this.lanes.length, 1)));
    return { r, start, span: Math.max(end - start, 0.001), left, lane };
  }
  draw() {
    const c = this.canvas, ratio = window.devicePixelRatio || 1, r = c.getBoundingClientRect();
    c.width = Math.round(r.width * ratio); c.height = Math.round(r.height * ratio);
    c.dataset.bars = this.bars.length; c.dataset.lanes = this.lanes.length;
    const g = c.getContext("2d"); g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.font = "12px system-ui, sans-serif"; g.textBaseline = "middle";
    if (!this.bars.length) { g.fillStyle = "#6b7280"; g.fillText("no attempt has started yet", 10, 20); return; }
    const { start, span, left, lane } = this.geometry(), width = r.width - left - 10;
    this.lanes.forEach((l, i) => {
      if (!l.first) return;
      g.fillStyle = "#1d2330"; g.fillText(l.worker.length > 20 ? l.worker.slice(0, 19) + "…" : l.worker, 6, 10 + i * lane + lane / 2);
    });
    for (const b of this.bars) {
      const i = this.lanes.indexOf(b.lane);
      const x = left + (b.start - start) / span * width;
      const w = Math.max(1, ((b.end || Date.now() / 1000) - b.start) / span * width);
      g.fillStyle = COLORS[b.status] || COLORS.running; g.fillRect(x, 12 + i * lane, w, lane - 6);
    }
    g.fillStyle = "#6b7280"; g.fillText(seconds(span), r.width - 60, r.height - 8);
  }
  hover(e) {
    if (!this.bars.length) return;
    const { r, start, span, left, lane } = this.geometry(), width = r.width - left - 10;
    const x = e.clientX - r.left, y = e.clientY - r.top, i = Math.floor((y - 10) / lane);
    const t = start + (x - left) / width * span;
    const bar = this.bars.find((b) => this.lanes.indexOf(b.lane) === i && b.start <= t && (b.end || Infinity) >= t);
    if (!bar) { this.tip.style.display = "none"; return; }
    this.tip.textContent = `${bar.step} #${bar.attempt} ${bar.status}\n${seconds((bar.end || Date.now() / 1000) - bar.start)} on ${bar.worker}`;
    this.tip.style.display = "block"; this.tip.style.left = (x + 12) + "px"; this.tip.style.top = (y + 12) + "px";
  }
}

// -- step, workers, queues, launch --------------------------------------------------------------

async function stepPage(main, runId, key) {
  const s = await api(`/api/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(key)}`);
  const attempts = el("tbody", {}, ...s.attempt_list.map((a) => el("tr", { dataset: { attempt: a.attempt } },
    el("td", {}, a.attempt), el("td", {}, a.status ? badge(a.status) : "running"), el("td", {}, a.worker || "-"),
    el("td", {}, when(a.started_at, true)), el("td", {}, a.finished_at && a.started_at ? seconds(a.finished_at - a.started_at) : "-"),
    el("td", {}, a.error ? errorBlock(a.error) : ""))));
  const lines = el("tbody", { id: "step-log" }, ...s.events.map((e) => el("tr", { dataset: { kind: e.kind } },
    el("td", { class: "mono" }, when(e.ts, true)), el("td", {}, e.kind), el("td", { class: "mono event-detail" }, eventText(e)))));
  main.replaceChildren(
    el("p", {}, el("a", { href: "/runs/" + encodeURIComponent(runId) }, "← run " + runId.slice(0, 12))),
    el("h1", {}, key, " ", badge(s.status)),
    el("dl", { class: "grid" }, ...[["step", s.name], ["queue", s.queue], ["attempts", s.attempts], ["worker", s.worker || "-"],
      ["inputs from", (s.deps || []).join(", ") || "-"]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("h2", {}, "Inputs"), el("pre", { id: "inputs" }, s.inputs || "-"),
    el("h2", {}, "Output"), el("pre", { id: "output" }, s.output || "-"),
    s.error ? el("div", {}, el("h2", {}, "Error"), errorBlock(s.error)) : null,
    el("h2", {}, "Attempts"), el("table", {}, el("thead", {}, el("tr", {},
      ...["#", "outcome", "worker", "started", "took", "error"].map((h) => el("th", {}, h)))), attempts),
    el("h2", {}, "Logs and progress"), el("table", {}, el("thead", {}, el("tr", {},
      ...["time", "event", "detail"].map((h) => el("th", {}, h)))), lines));
  if (!["succeeded", "failed", "skipped", "cancelled"].includes(s.status)) {
    const live = stream(`/api/runs/${encodeURIComponent(runId)}/stream?after=${s.last_seq}`, { event(kind, e) {
      if (e.step !== key) return;
      if (STEP_STATUS[kind]) { live.close(); stepPage(main, runId, key); return; }
      lines.append(el("tr", { dataset: { kind } }, el("td", { class: "mono" }, when(e.ts, true)), el("td", {}, kind),
        el("td", { class: "mono event-detail" }, eventText(e))));
    } });
  }
}

async function workersPage(main) {
  const body = el("tbody", { id: "workers-body" });
  main.replaceChildren(el("h1", {}, "Workers"), el("table", { id: "workers" }, el("thead", {}, el("tr", {},
    ...["name", "host", "pid", "queues", "in flight", "heartbeat age"].map((h) => el("th", {}, h)))), body));
  for (;;) {
    try {
      const { workers } = await api("/api/workers");
      body.replaceChildren(...workers.map((w) => el("tr", { dataset: { worker: w.name } }, el("td", { class: "mono" }, w.name), el("td", {}, w.host),
        el("td", {}, w.pid), el("td", {}, w.queues.join(", ")), el("td", {}, w.in_flight), el("td", {}, seconds(w.heartbeat_age)))));
      if (!workers.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no worker answered")));
    } catch (e) { notice(e.message); }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function queuesPage(main) {
  const body = el("tbody", { id: "queues-body" });
  main.replaceChildren(el("h1", {}, "Queues"), el("table", { id: "queues" }, el("thead", {}, el("tr", {},
    ...["queue", "waiting", "consumers", "in flight"].map((h) => el("th", {}, h)))), body));
  for (;;) {
    try {
      const { queues } = await api("/api/queues");
      body.replaceChildren(...queues.map((q) => el("tr", { dataset: { queue: q.name } }, el("td", { class: "mono" }, q.name),
        el("td", {}, q.depth === null ? "-" : q.depth), el("td", {}, q.consumers), el("td", {}, q.in_flight))));
      if (!queues.length) body.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no worker serves a queue")));
    } catch (e) { notice(e.message); }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function launchPage(main) {
  const known = await api("/api/pipelines");
  const wanted = new URLSearchParams(location.search).get("pipeline");
  const pipeline = el("select", { name: "pipeline", id: "launch-pipeline" },
    ...known.pipelines.map((p) => el("option", { value: p.name, selected: p.name === wanted }, p.name)));
  const file = el("input", { name: "file", id: "launch-file", size: 40, placeholder: "/path/to/pipeline.py" });
  const name = el("input", { name: "name", id: "launch-name", placeholder: "pipeline in the file (if several)" });
  const params = el("textarea", { name: "params", id: "launch-params", rows: 4, cols: 50 }, "{}");
  const priority = el("input", { name: "priority", type: "number", min: 0, max: 10, value: 0, id: "launch-priority" });
  const tags = el("input", { name: "tags", id: "launch-tags", size: 40, placeholder: "team=data env=staging" });
  const hint = el("p", { class: "muted" });
  function showParams() {
    const p = known.pipelines.find((x) => x.name === pipeline.value);
    hint.textContent = p && p.parameters.length ? "parameters: " + p.parameters.map((x) => x.default === null ? x.name : `${x.name}=${x.default}`).join(", ") : "";
  }
  pipeline.addEventListener("change", showParams); showParams();
  const form = el("form", { id: "launch", on: { async submit(e) {
    e.preventDefault();
    let values;
    try { values = JSON.parse(params.value || "{}"); } catch (err) { notice("parameters are not JSON: " + err.message); return; }
    const labels = {};
    for (const item of tags.value.split(/\s+/).filter(Boolean)) {
      const cut = item.indexOf("=");
      if (cut <= 0) { notice(`tag ${item} is not key=value`); return; }
      labels[item.slice(0, cut)] = item.slice(cut + 1);
    }
    const body = { params: values, priority: Number(priority.value), tags: labels };
    if (file.value.trim()) { body.file = file.value.trim(); if (name.value.trim()) body.pipeline = name.value.trim(); }
    else body.pipeline = pipeline.value;
    try {
      const started = await post("/api/runs", body);
      location.href = ROOT + "/runs/" + encodeURIComponent(started.run_id);
    } catch (err) { notice("cannot launch: " + err.message); }
  } } },
    known.pipelines.length ? el("p", {}, el("label", {}, "pipeline ", pipeline)) : el("p", { class: "muted" }, "this server lists no pipeline (aexec ui -A FILE)"),
    hint,
    known.files ? el("p", {}, el("label", {}, "or a file on the server ", file), " ", name) : null,
    el("p", {}, el("label", {}, "parameters (JSON object)", el("br"), params)),
    el("p", {}, el("label", {}, "priority ", priority)),
    el("p", {}, el("label", {}, "tags ", tags)),
    el("button", { type: "submit", id: "launch-submit" }, "Launch"));
  main.replaceChildren(el("h1", {}, "Launch a run"), form);
}

// -- routing -------------------------------------------------------------------------------------

async function route() {
  const main = document.getElementById("main");
  const path = location.pathname.slice(ROOT.length).split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (path.length === 0) runsPage(main);
    else if (path[0] === "runs" && path.length === 2) await runPage(main, path[1]);
    else if (path[0] === "runs" && path.length >= 4 && path[2] === "steps") await stepPage(main, path[1], path.slice(3).join("/"));
    else if (path[0] === "workers") await workersPage(main);
    else if (path[0] === "queues") await queuesPage(main);
    else if (path[0] === "launch") await launchPage(main);
    else main.replaceChildren(el("h1", {}, "Not found"), el("p", {}, el("a", { href: "/" }, "runs")));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    main.replaceChildren(el("h1", {}, "Error"), el("p", { class: "page-error" }, e.message));
  }
}

route();
