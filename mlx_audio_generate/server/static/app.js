// mlx-audio-generate web UI: plain JS over the server's HTTP API (see /docs). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "mlx-audio-generate.history";
const POLL_MS = 250;

const state = { models: [], jobId: null, timer: null };

// ---------------------------------------------------------------------------------------------- helpers

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  } catch (err) {
    return { ok: false, status: 0, data: { message: "cannot reach the server; is mlx-audio-server running?" } };
  }
  let data = null;
  try { data = await response.json(); } catch (err) { /* not JSON */ }
  return { ok: response.ok, status: response.status, data };
}

function errorText(res) {
  const d = res.data || {};
  if (typeof d.message === "string" && d.message) return d.message;
  if (typeof d.detail === "string") return d.detail;
  return `request failed (HTTP ${res.status})`;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

const fmtSeconds = (s) => `${Number(s.toFixed(2))} s`;
const selectedModel = () => state.models.find((m) => m.name === $("model").value);

// ---------------------------------------------------------------------------------------------- models

async function loadModels() {
  const res = await api("/api/models");
  if (!res.ok) return showError(errorText(res));
  state.models = res.data;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) =>
    el("option", { value: m.name, textContent: `${m.name} (${m.family_label})` })));
  const last = localStorage.getItem("mlx-audio-generate.model");
  if (state.models.some((m) => m.name === last)) select.value = last;
  onModelChange();
}

function onModelChange() {
  const m = selectedModel();
  if (!m) return;
  localStorage.setItem("mlx-audio-generate.model", m.name);
  const max = Math.floor(m.max_seconds * 1000) / 1000;
  $("model-info").textContent = `${m.family_label} · ${m.sample_rate / 1000} kHz`;
  $("seconds").max = String(max);
  $("seconds-hint").textContent = `up to ${max} s`;
  if (Number($("seconds").value) > max) $("seconds").value = String(max);
  renderParams(m);
}

function renderParams(m) {
  const fields = m.params.map((p) => {
    const id = `param-${p.name}`;
    let input;
    if (p.kind === "choice") {
      input = el("select", {}, ...p.choices.map((c) => el("option", { value: c, textContent: c })));
    } else if (p.kind === "text") {
      input = el("input", { type: "text", maxLength: p.max_length || 1000 });
    } else {
      input = el("input", { type: "number", step: p.kind === "int" ? "1" : "any" });
      if (p.minimum !== null) input.min = String(p.minimum);
      if (p.maximum !== null) input.max = String(p.maximum);
    }
    const value = p.default === null ? "" : String(p.default);
    Object.assign(input, { id, name: p.name, value });
    input.dataset.testid = id;
    input.dataset.kind = p.kind;
    input.dataset.default = value;
    const range = p.minimum !== null && p.maximum !== null ? ` (${p.minimum}–${p.maximum})` : "";
    return el("div", { className: p.kind === "text" ? "field wide" : "field" },
      el("label", { htmlFor: id, textContent: p.label }), input,
      el("small", { className: "hint", textContent: p.help + range }));
  });
  $("params").replaceChildren(...fields);
}

function resetParams() {
  for (const input of $("params").querySelectorAll("[data-kind]")) input.value = input.dataset.default;
}

// ---------------------------------------------------------------------------------------------- jobs

function collectRequest() {
  const body = { model: $("model").value, prompt: $("prompt").value, seconds: Number($("seconds").value) };
  if ($("seconds").value.trim() === "") body.seconds = 0; // the server says what is wrong
  if ($("seed").value.trim() !== "") body.seed = Number($("seed").value);
  for (const input of $("params").querySelectorAll("[data-kind]")) {
    const kind = input.dataset.kind;
    if (kind === "int" || kind === "float") {
      if (input.value.trim() !== "") body[input.name] = Number(input.value);
    } else {
      body[input.name] = input.value;
    }
  }
  return body;
}

function clearInvalid() {
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function markInvalid(res) {
  const detail = (res.data && Array.isArray(res.data.detail)) ? res.data.detail : [];
  for (const d of detail) {
    const field = Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : null;
    const input = field && ($(field) || $(`param-${field}`));
    if (input) input.setAttribute("aria-invalid", "true");
  }
}

async function submit(event) {
  event.preventDefault();
  if (state.jobId) return;
  clearInvalid();
  setBusy(true);
  showPanel();
  setStatus("Submitting…", "");
  const res = await api("/api/jobs", { method: "POST", body: JSON.stringify(collectRequest()) });
  if (!res.ok) {
    markInvalid(res);
    setBusy(false);
    $("status-line").hidden = true;
    $("progress").hidden = true;
    return showError(errorText(res));
  }
  state.jobId = res.data.id;
  poll();
}

async function poll() {
  const id = state.jobId;
  if (!id) return;
  const res = await api(`/api/jobs/${id}`);
  if (id !== state.jobId) return;
  if (!res.ok) {
    finishJob();
    return showError(errorText(res));
  }
  const job = res.data;
  renderJob(job);
  if (job.status === "queued" || job.status === "running") {
    state.timer = setTimeout(poll, POLL_MS);
  } else {
    finishJob();
    if (job.status === "done") addHistory(job);
  }
}

function finishJob() {
  clearTimeout(state.timer);
  state.jobId = null;
  setBusy(false);
}

async function cancel() {
  if (state.jobId) await api(`/api/jobs/${state.jobId}`, { method: "DELETE" });
}

// ---------------------------------------------------------------------------------------------- view

function setBusy(busy) {
  $("generate").disabled = busy;
  $("generate").textContent = busy ? "Generating…" : "Generate";
  $("cancel").hidden = !busy;
}

function showPanel() {
  $("current").hidden = false;
  $("status-line").hidden = false;
  $("progress").hidden = false;
  $("error").hidden = true;
  $("result").hidden = true;
  setProgress(0, false);
}

function setStatus(text, detail) {
  $("status").textContent = text;
  $("progress-text").textContent = detail;
}

function setProgress(fraction, indeterminate) {
  const pct = Math.round(fraction * 100);
  $("progress").classList.toggle("indeterminate", indeterminate);
  $("progress").setAttribute("aria-valuenow", String(pct));
  $("progress-bar").style.width = indeterminate ? "" : `${pct}%`;
}

function showError(message) {
  $("current").hidden = false;
  $("error").textContent = message;
  $("error").hidden = false;
}

function renderJob(job) {
  $("current").dataset.status = job.status;
  if (job.status === "queued") {
    setStatus("Queued", job.queue_position ? `position ${job.queue_position}` : "");
    setProgress(0, true);
  } else if (job.status === "running") {
    if (job.stage === "loading") {
      setStatus("Loading model…", "first use only");
      setProgress(0, true);
    } else if (job.stage === "writing") {
      setStatus("Writing file…", "");
      setProgress(1, false);
    } else {
      setStatus("Generating…", job.total ? `step ${job.step} / ${job.total} · ${Math.round(job.progress * 100)}%` : "");
      setProgress(job.progress, false);
    }
  } else if (job.status === "done") {
    setStatus("Done", `generated in ${job.elapsed.toFixed(1)} s · seed ${job.seed}`);
    setProgress(1, false);
    $("result-prompt").textContent = job.prompt;
    $("player").src = job.audio_url;
    $("download").href = job.audio_url;
    $("download").download = job.download_name;
    $("result-info").textContent = clipInfo(job);
    $("result").hidden = false;
  } else if (job.status === "failed") {
    setStatus("Failed", "");
    setProgress(0, false);
    showError(job.error || "the job failed");
  } else {
    setStatus("Cancelled", "");
    setProgress(0, false);
  }
}

function clipInfo(job) {
  return `${job.model} · ${fmtSeconds(job.seconds)} · seed ${job.seed}`;
}

// ---------------------------------------------------------------------------------------------- history

function loadHistory() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_KEY)) || []; } catch (err) { return []; }
}

function addHistory(job) {
  const keep = ["id", "model", "prompt", "seconds", "seed", "params", "audio_url", "download_name"];
  const entry = Object.fromEntries(keep.map((k) => [k, job[k]]));
  const history = [entry, ...loadHistory().filter((h) => h.id !== job.id)].slice(0, 50);
  sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  renderHistory(history);
}

function renderHistory(history) {
  $("history-empty").hidden = history.length > 0;
  $("history").replaceChildren(...history.map((h) => el("li", { dataset: { testid: "history-item", jobId: h.id } },
    el("p", { className: "clip-prompt", textContent: h.prompt }),
    el("audio", { controls: true, preload: "none", src: h.audio_url }),
    el("div", { className: "clip-meta" },
      el("span", { textContent: clipInfo(h) }),
      el("span", { className: "clip-actions" },
        el("button", { type: "button", className: "link", textContent: "Reuse settings", onclick: () => reuse(h) }),
        el("a", { href: h.audio_url, download: h.download_name, textContent: "Download" }))))));
}

function reuse(h) {
  $("prompt").value = h.prompt;
  if (state.models.some((m) => m.name === h.model)) {
    $("model").value = h.model;
    onModelChange();
  }
  $("seconds").value = String(h.seconds);
  $("seed").value = String(h.seed);
  for (const [name, value] of Object.entries(h.params || {})) {
    const input = $(`param-${name}`);
    if (input) input.value = String(value);
  }
  $("prompt").focus();
}

async function pruneHistory() {
  // Clips of an earlier server run are gone from this one: drop them instead of showing dead players.
  const res = await api("/api/jobs");
  if (!res.ok) return renderHistory(loadHistory());
  const live = new Set(res.data.filter((j) => j.status === "done").map((j) => j.id));
  const history = loadHistory().filter((h) => live.has(h.id));
  sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  renderHistory(history);
}

// ---------------------------------------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("generate-form").addEventListener("submit", submit);
  $("model").addEventListener("change", onModelChange);
  $("reset-params").addEventListener("click", resetParams);
  $("cancel").addEventListener("click", cancel);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("generate-form").requestSubmit();
  });
  loadModels();
  pruneHistory();
});
