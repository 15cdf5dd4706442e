// The sandbox's web UI: plain DOM, no library. Every text from a message is set with
// textContent (never innerHTML), so a subject with <script> shows as text.
"use strict";

const state = { query: "", selected: null, tab: "html" };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function address(a) {
  if (!a || !a.Address) return "";
  return a.Name ? `${a.Name} <${a.Address}>` : a.Address;
}

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleString();
}

async function getJSON(url, options) {
  const resp = await fetch(url, options);
  if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
  return resp.json();
}

function row(m) {
  const li = el("li", m.Read ? "" : "unread");
  li.dataset.id = m.ID;
  const top = el("div", "row1");
  top.append(el("span", "from", address(m.From) || "(no sender)"), el("span", "created", when(m.Created)));
  li.append(top, el("div", "subject", m.Subject || "(no subject)"), el("div", "snippet", m.Snippet || ""));
  if (m.ID === state.selected) li.classList.add("selected");
  li.addEventListener("click", () => openMessage(m.ID));
  return li;
}

function showCount(data) {
  const shown = state.query ? `${data.messages_count} of ${data.total}` : `${data.total}`;
  $("count").textContent = `${shown} messages, ${data.unread} unread`;
}

async function loadList() {
  const url = state.query
    ? `/api/v1/search?query=${encodeURIComponent(state.query)}&limit=200`
    : "/api/v1/messages?limit=200";
  const data = await getJSON(url);
  const list = $("messages");
  list.replaceChildren(...data.messages.map(row));
  $("empty").hidden = data.messages.length > 0;
  showCount(data);
}

function selectTab(name) {
  state.tab = name;
  for (const b of document.querySelectorAll("#tabs button")) {
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
  }
  for (const p of document.querySelectorAll(".tab")) p.hidden = p.dataset.panel !== name;
  if (name === "raw" && state.selected) loadRaw(state.selected);
}

async function loadRaw(id) {
  const resp = await fetch(`/api/v1/message/${encodeURIComponent(id)}/raw`);
  if (resp.ok && state.selected === id) $("view-raw").textContent = await resp.text();
}

function meta(m) {
  const dl = $("view-meta");
  dl.replaceChildren();
  const add = (label, value) => {
    if (!value) return;
    dl.append(el("dt", "", label), el("dd", "", value));
  };
  add("From", address(m.From));
  add("To", m.To.map(address).join(", "));
  add("Cc", m.Cc.map(address).join(", "));
  add("Bcc", m.Bcc.map(address).join(", "));
  add("Date", when(m.Date));
  add("Return-Path", m.ReturnPath);
  add("Size", `${m.Size} bytes`);
  if (m.Attachments.length) {
    const files = el("dd", "attachments");
    for (const a of m.Attachments) {
      const link = el("a", "", `${a.FileName || a.ContentType} (${a.Size} bytes)`);
      link.href = `/api/v1/message/${encodeURIComponent(m.ID)}/part/${encodeURIComponent(a.PartID)}`;
      link.download = a.FileName || "part";
      files.append(link, " ");
    }
    dl.append(el("dt", "", "Attachments"), files);
  }
}

async function openMessage(id) {
  state.selected = id;
  for (const li of document.querySelectorAll("#messages li")) {
    li.classList.toggle("selected", li.dataset.id === id);
    if (li.dataset.id === id) li.classList.remove("unread");
  }
  const m = await getJSON(`/api/v1/message/${encodeURIComponent(id)}`);
  if (state.selected !== id) return;
  $("view").hidden = false;
  $("placeholder").hidden = true;
  $("view-subject").textContent = m.Subject || "(no subject)";
  meta(m);
  $("view-text").textContent = m.Text || "(no text part)";
  const frame = $("view-html");
  frame.hidden = !m.HTML;
  $("view-no-html").hidden = Boolean(m.HTML);
  frame.src = m.HTML ? `/view/${encodeURIComponent(id)}.html` : "about:blank";
  const headers = await getJSON(`/api/v1/message/${encodeURIComponent(id)}/headers`);
  const table = $("view-headers");
  table.replaceChildren(
    ...Object.entries(headers).flatMap(([name, values]) =>
      values.map((v) => {
        const tr = el("tr");
        tr.append(el("td", "", name), el("td", "", v));
        return tr;
      }),
    ),
  );
  $("view-raw").textContent = "";
  selectTab(m.HTML ? state.tab : state.tab === "html" ? "text" : state.tab);
}

function closeView() {
  state.selected = null;
  $("view").hidden = true;
  $("placeholder").hidden = false;
  $("view-html").src = "about:blank";
}

async function remove(ids) {
  await fetch("/api/v1/messages", {
    method: "DELETE",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ IDs: ids }),
  });
}

function live() {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("open", () => {
    $("live").textContent = "live";
    $("live").classList.add("on");
    loadList(); // whatever arrived while the stream was down
  });
  source.addEventListener("error", () => {
    $("live").textContent = "offline";
    $("live").classList.remove("on");
  });
  source.addEventListener("new", () => loadList());
  source.addEventListener("delete", (e) => {
    const ids = JSON.parse(e.data).IDs;
    if (state.selected && (ids.length === 0 || ids.includes(state.selected))) closeView();
    loadList();
  });
  source.addEventListener("read", () => loadList());
}

function start() {
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    state.query = $("search-input").value.trim();
    loadList();
  });
  $("search-clear").addEventListener("click", () => {
    $("search-input").value = "";
    state.query = "";
    loadList();
  });
  $("delete").addEventListener("click", async () => {
    if (!state.selected) return;
    const id = state.selected;
    closeView();
    await remove([id]);
    loadList();
  });
  $("delete-all").addEventListener("click", async () => {
    if (!window.confirm("Delete every message?")) return;
    closeView();
    await fetch("/api/v1/messages", { method: "DELETE" });
    loadList();
  });
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => selectTab(b.dataset.tab));
  }
  selectTab("html");
  loadList();
  live();
}

document.addEventListener("DOMContentLoaded", start);
