// The hermesx console: a live view of the cluster over the gateway's /v1 API (docs/DESIGN.md §13).
// Plain module, no build step. State arrives as server-sent events; actions are same-origin POSTs.

const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (sel) => document.querySelector(sel);
const seenNodes = new Map(); // name -> last row seen (a node that left shows as gone)
let atoms = [];
let chosen = null; // GUID of the atom shown
let chosenKey = "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function policyText(p) {
  const parts = [p.checkpoint];
  if (p.tags && p.tags.length) parts.push(`tags ${p.tags.join(",")}`);
  if (p.placement && p.placement !== "none") parts.push(p.placement);
  if (p.idle_passivate_seconds) parts.push(`idle ${p.idle_passivate_seconds}s`);
  return parts.join(" · ");
}

function renderNodes(nodes) {
  const live = new Set(nodes.map((n) => n.name));
  for (const n of nodes) seenNodes.set(n.name, n);
  const body = $("#nodes tbody");
  body.replaceChildren();
  for (const [name, n] of [...seenNodes.entries()].sort()) {
    const state = live.has(name) ? n.state : "gone";
    body.append(
      el("tr", { "data-node": name, class: `node-${state}` },
        el("td", { class: "name" }, name),
        el("td", { class: `state state-${state}` }, state),
        el("td", {}, n.tags.join(", ") || "—"),
        el("td", { class: "atoms" }, live.has(name) ? n.atoms ?? "?" : "—"),
        el("td", {}, live.has(name) && n.calls_per_s != null ? n.calls_per_s : "—"),
        el("td", { class: "muted" }, n.address)));
  }
  const select = $("#migrate-node");
  const current = select.value;
  select.replaceChildren(...nodes.map((n) => el("option", { value: n.name }, n.name)));
  if (live.has(current)) select.value = current;
}

function renderAtoms(list) {
  atoms = list;
  const body = $("#atoms tbody");
  body.replaceChildren();
  for (const a of list) {
    const row = el("tr", { "data-guid": a.guid, "data-name": a.name || "", class: a.guid === chosen ? "chosen" : "" },
      el("td", { class: "name", title: a.guid }, a.name || a.guid),
      el("td", { class: "node" }, a.node || "—"),
      el("td", { class: "age" }, a.age),
      el("td", { class: `state state-${a.state}` }, a.state),
      el("td", { class: "muted" }, policyText(a.policy)),
      el("td", { class: "muted" }, a.storesite));
    row.addEventListener("click", () => choose(a.guid));
    body.append(row);
  }
  const mine = list.find((a) => a.guid === chosen);
  if (mine && `${mine.node}@${mine.age}/${mine.state}` !== chosenKey) drawChain();
}

function addEvent(e) {
  const when = new Date(e.at * 1000).toLocaleTimeString();
  const item = el("li", { "data-kind": e.kind }, el("time", {}, when), el("span", { class: "kind" }, e.kind), e.text);
  $("#events").prepend(item);
  while ($("#events").children.length > 200) $("#events").lastChild.remove();
}

async function api(method, path, body) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = body;
  }
  const reply = await fetch(path, init);
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(`${reply.status} ${data.kind || ""}: ${data.detail || reply.statusText}`);
  return data;
}

function choose(guid) {
  chosen = guid;
  chosenKey = "";
  for (const row of document.querySelectorAll("#atoms tbody tr")) row.classList.toggle("chosen", row.dataset.guid === guid);
  const atom = atoms.find((a) => a.guid === guid);
  $("#chosen").textContent = atom ? atom.name || atom.guid : guid;
  $("#actions").hidden = false;
  drawChain();
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function drawChain() {
  if (!chosen) return;
  const guid = chosen;
  let chain;
  try {
    chain = await api("GET", `/v1/atoms/${encodeURIComponent(guid)}/chain`);
  } catch (err) {
    $("#chain").textContent = String(err.message);
    return;
  }
  if (guid !== chosen) return;
  chosenKey = `${chain.location.node}@${chain.location.age}/${chain.state}`;
  const stashes = chain.stashes;
  const W = 150, H = 62, GAP = 40, TOP = 70;
  const width = Math.max(stashes.length * (W + GAP) + GAP, 420);
  const pic = svg("svg", { viewBox: `0 0 ${width} 260`, id: "chain-svg", role: "img" });
  const defs = svg("defs", {});
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#1f6f8b" }));
  defs.append(marker);
  pic.append(defs);
  const x = new Map();
  stashes.forEach((s, i) => x.set(s.node, GAP + i * (W + GAP)));
  stashes.forEach((s) => {
    const left = x.get(s.node);
    const holds = s.active_here;
    const group = svg("g", { class: "stash", "data-node": s.node });
    group.append(svg("rect", { x: left, y: TOP, width: W, height: H, rx: 6, fill: holds ? "#e3f1e4" : "#ffffff", stroke: holds ? "#2e7d32" : "#9aa5ab", "stroke-width": holds ? 2.5 : 1.2 }));
    group.append(svg("text", { x: left + 10, y: TOP + 20, "font-weight": 700, "font-size": 14 }, s.node));
    let line = "stash: nothing";
    if (s.error) line = `no answer (${s.error})`;
    else if (holds) line = `holds it · age ${s.tad ? s.tad.age : chain.location.age}`;
    else if (s.tad) line = `→ ${s.tad.node} @ age ${s.tad.age}`;
    group.append(svg("text", { x: left + 10, y: TOP + 42, "font-size": 12, fill: "#3b4449" }, line));
    pic.append(group);
    if (s.tad && !holds && s.tad.node !== s.node && x.has(s.tad.node)) {
      const from = left + W / 2, to = x.get(s.tad.node) + W / 2;
      const lift = 28 + Math.abs(to - from) / 8;
      pic.append(svg("path", { d: `M${from},${TOP} C${from},${TOP - lift} ${to},${TOP - lift} ${to},${TOP - 2}`, fill: "none", stroke: "#1f6f8b", "stroke-width": 1.8, "marker-end": "url(#arrow)" }));
      pic.append(svg("text", { x: (from + to) / 2, y: TOP - lift + 8, "font-size": 11, "text-anchor": "middle", fill: "#1f6f8b" }, `age ${s.tad.age}`));
    }
  });
  const loc = chain.location;
  const sx = GAP, sy = 190;
  pic.append(svg("rect", { x: sx, y: sy, width: 300, height: 50, rx: 6, fill: "#f4efe4", stroke: "#b26a00" }));
  pic.append(svg("text", { x: sx + 10, y: sy + 20, "font-weight": 700, "font-size": 13 }, `storesite ${loc.storesite}`));
  pic.append(svg("text", { x: sx + 10, y: sy + 40, "font-size": 12 }, chain.state === "dormant" ? `record: dormant (age ${loc.age})` : `record: on ${loc.node} at age ${loc.age}`));
  if (loc.node && x.has(loc.node)) {
    pic.append(svg("path", { d: `M${sx + 300},${sy + 20} L${x.get(loc.node) + W / 2},${TOP + H + 2}`, fill: "none", stroke: "#b26a00", "stroke-dasharray": "5 4", "stroke-width": 1.5, "marker-end": "url(#arrow)" }));
  }
  $("#chain").replaceChildren(pic);
}

async function act(label, call) {
  $("#answer").textContent = `${label}…`;
  try {
    const data = await call();
    $("#answer").textContent = `${label}: ${JSON.stringify(data)}`;
  } catch (err) {
    $("#answer").textContent = `${label} failed: ${err.message}`;
  }
  drawChain();
}

function target() {
  return encodeURIComponent(chosen);
}

function connect() {
  const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
  const source = new EventSource(`/v1/events${query}`);
  source.addEventListener("open", () => { $("#link").textContent = "live"; });
  source.addEventListener("error", () => { $("#link").textContent = "reconnecting…"; });
  source.addEventListener("state", (msg) => {
    const state = JSON.parse(msg.data);
    renderNodes(state.nodes);
    renderAtoms(state.atoms);
    $("#link").textContent = `live · ${state.nodes.length} nodes · ${state.atoms.length} atoms`;
  });
  source.addEventListener("change", (msg) => addEvent(JSON.parse(msg.data)));
}

document.addEventListener("DOMContentLoaded", () => {
  $("#migrate-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const node = $("#migrate-node").value;
    act(`migrate to ${node}`, () => api("POST", `/v1/atoms/${target()}/actions/migrate`, JSON.stringify({ node })));
  });
  $("#passivate").addEventListener("click", () => act("passivate", () => api("POST", `/v1/atoms/${target()}/actions/passivate`, "")));
  $("#checkpoint").addEventListener("click", () => act("checkpoint", () => api("POST", `/v1/atoms/${target()}/actions/checkpoint`, "")));
  $("#invoke-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const method = $("#invoke-method").value.trim();
    if (!method) return;
    act(`${method}`, () => api("POST", `/v1/atoms/${target()}/${encodeURIComponent(method)}`, $("#invoke-args").value));
  });
  connect();
});
