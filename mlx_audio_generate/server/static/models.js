// The model picker's catalog (GET /api/catalog): the served models first, then those this server can fetch,
// with their sizes and a Fetch button; while a model is fetched its row shows the stage and a progress bar
// (polled), and once it is served it joins the model select (app.js) and is selected.
// Uses app.js's helpers ($, api, el, errorText, state, selectedModel, onModelChange). Nothing leaves this server.
"use strict";

const CATALOG_POLL_MS = 400;
const SIZES_POLL_MS = 1000; // while the server asks the hub for the sizes
// select: models fetched from this page, picked once served; loading: a request is on its way
const catalog = { timer: null, data: null, select: new Set(), loading: false };

const STATE_RANK = { served: 0, fetching: 1, cached: 2, failed: 3, fetchable: 3 };

function fmtBytes(n) {
  if (n == null) return "size unknown";
  const units = [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]];
  for (const [unit, size] of units) if (n >= size) return `${(n / size).toFixed(n >= 10 * size ? 0 : 1)} ${unit}`;
  return `${n} B`;
}

async function loadCatalog() {
  if (catalog.loading) return;
  clearTimeout(catalog.timer);
  catalog.loading = true;
  let res;
  // Sizes come from the hub: asked only while the Models panel is open (a page merely open contacts no one).
  const url = $("models-panel").open ? "/api/catalog?sizes=true" : "/api/catalog";
  try { res = await api(url); } finally { catalog.loading = false; }
  if (!res.ok) {
    $("catalog-note").textContent = errorText(res);
    return;
  }
  const before = catalog.data;
  catalog.data = res.data;
  if (before === null && res.data.served.length === 0) $("models-panel").open = true; // nothing to pick: fetch one (its toggle reloads with sizes)
  const added = before === null ? [] : res.data.served.filter((name) => !before.served.includes(name));
  if (added.length) await modelsAdded(added);
  renderCatalog(res.data);
  if (res.data.models.some((m) => m.state === "fetching")) catalog.timer = setTimeout(loadCatalog, CATALOG_POLL_MS);
  else if (res.data.sizes_pending) catalog.timer = setTimeout(loadCatalog, SIZES_POLL_MS);
}

async function modelsAdded(names) {
  // new options in the select (app.js lists the served models), keeping what is selected and its settings;
  // a model fetched from this page is selected once it is served (and the first one when there was none)
  const res = await api("/api/models");
  if (!res.ok) return;
  const fresh = res.data.filter((m) => !state.models.some((s) => s.name === m.name));
  state.models.push(...fresh);
  $("model").append(...fresh.map((m) => el("option", { value: m.name, textContent: `${m.name} (${m.family_label})` })));
  const pick = names.find((name) => catalog.select.has(name)) || (selectedModel() ? null : names[0]);
  if (pick && state.models.some((m) => m.name === pick)) {
    catalog.select.delete(pick);
    $("model").value = pick;
    onModelChange();
  }
}

async function startFetch(entry) {
  const res = await api("/api/models/fetch", { method: "POST", body: JSON.stringify({ name: entry.name }) });
  if (!res.ok) {
    entry.pageError = errorText(res);
    return renderCatalog(catalog.data);
  }
  catalog.select.add(res.data.served_as || entry.name);
  Object.assign(entry, { state: "fetching", fetch: res.data, pageError: null });
  renderCatalog(catalog.data); // "queued" at once, then polled
  catalog.timer = setTimeout(loadCatalog, CATALOG_POLL_MS);
}

async function cancelFetch(entry) {
  const res = await api(`/api/models/fetch/${encodeURIComponent(entry.name)}`, { method: "DELETE" });
  if (!res.ok) entry.pageError = errorText(res); // e.g. it has just finished
  loadCatalog(); // the row becomes fetchable again once the fetch has stopped
}

function useModel(name) {
  if (!state.models.some((m) => m.name === name)) return;
  $("model").value = name;
  onModelChange();
  $("model").focus();
}

function fetchLine(f) {
  // [text, fraction or null (indeterminate)]
  if (f.stage === "queued") return ["starting…", null];
  if (f.stage === "download") {
    const files = f.files_total ? ` · file ${f.files_done} / ${f.files_total}` : "";
    if (f.bytes_total) return [`downloading ${fmtBytes(f.bytes_done)} / ${fmtBytes(f.bytes_total)}${files}`, f.progress];
    return [files ? `downloading${files}` : "looking for its files…", files ? f.progress : null];
  }
  if (f.stage === "convert") {
    return [f.tensors_total ? `converting for MLX · ${f.tensors_done} / ${f.tensors_total} tensors` : "converting for MLX…",
      f.tensors_total ? f.progress : null];
  }
  return ["adding it to the served models…", null];
}

function catalogRow(m) {
  const facts = m.own ? [m.family_label].filter(Boolean) : [m.family_label, fmtBytes(m.size_bytes)];
  if (m.downloaded && m.state !== "served") facts.push("downloaded");
  const line = el("div", { className: "catalog-line" },
    el("span", { className: "catalog-name", textContent: m.name, title: m.repo }),
    el("span", { className: "hint", textContent: facts.join(" · ") }));
  const item = el("li", { className: "catalog-item", dataset: { testid: "catalog-item", name: m.name, state: m.state } },
    line);
  const status = el("span", { className: "catalog-state", dataset: { testid: "fetch-status" } });
  line.append(status);
  const enabled = catalog.data.fetch_enabled;
  const button = (text, onclick, testid) => el("button", { type: "button", textContent: text, onclick,
    disabled: !enabled && testid === "fetch-button", dataset: { testid },
    title: enabled ? "" : "fetching is off on this server (--no-fetch)" });
  if (m.state === "served") {
    status.textContent = m.served_as.length ? `served as ${m.served_as.join(", ")}` : "served";
    if (m.served_as.length) line.append(button("Use", () => useModel(m.served_as[0]), "use-model"));
  } else if (m.state === "fetching") {
    const [text, fraction] = fetchLine(m.fetch);
    status.textContent = text;
    line.append(button("Cancel", () => cancelFetch(m), "cancel-fetch"));
    const bar = el("div", { className: "bar" });
    const progress = el("div", { className: "progress", role: "progressbar", dataset: { testid: "fetch-progress" } },
      bar);
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    progress.classList.toggle("indeterminate", fraction === null);
    if (fraction !== null) {
      bar.style.width = `${Math.round(fraction * 100)}%`;
      progress.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    }
    item.append(progress);
  } else {
    const cancelled = m.fetch && m.fetch.state === "cancelled";
    status.textContent = { cached: "converted, not served yet", failed: "failed", fetchable: cancelled ? "cancelled" : "" }[m.state];
    const label = m.state === "cached" ? "Add" : m.state === "failed" ? "Retry" : "Fetch";
    line.append(button(label, () => startFetch(m), "fetch-button"));
  }
  const error = m.pageError || (m.state === "failed" && m.fetch ? m.fetch.error : null);
  if (error) item.append(el("p", { className: "error", role: "alert", textContent: error, dataset: { testid: "fetch-error" } }));
  return item;
}

function renderCatalog(data) {
  const inCatalog = new Set(data.models.flatMap((m) => m.served_as));
  // served models that are no registry name (a converted folder of one's own) head the list as they are
  const label = (name) => (state.models.find((m) => m.name === name) || {}).family_label || "";
  const own = data.served.filter((name) => !inCatalog.has(name)).map((name) => ({
    name, family_label: label(name), repo: "", size_bytes: null, downloaded: false,
    state: "served", served_as: [name], fetch: null, own: true,
  }));
  const rows = [...own, ...data.models.slice().sort((a, b) => STATE_RANK[a.state] - STATE_RANK[b.state])];
  $("catalog").replaceChildren(...rows.map(catalogRow));
  const fetchable = data.models.filter((m) => m.state !== "served").length;
  $("catalog-summary").textContent = `${data.served.length} served · ${fetchable} more ${
    data.fetch_enabled ? "can be fetched" : "listed (fetching is off on this server)"}`;
  $("catalog-note").textContent = data.fetch_enabled
    ? "Fetch downloads a model once (through the Hugging Face cache) and converts it for MLX; generation goes on meanwhile."
    : "This server was started with --no-fetch: its owner fetches models with mlx-audio-convert.";
}

document.addEventListener("DOMContentLoaded", () => {
  $("models-panel").addEventListener("toggle", () => { if ($("models-panel").open) loadCatalog(); });
  loadCatalog();
});
