// mlx-audio-generate web UI: plain JS over the server's HTTP API (see /docs). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_LIMIT = 50;
const POLL_MS = 250;

const state = { models: [], jobId: null, timer: null, takes: [] }; // takes: the ids of this submission

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
  if (!res.ok) {
    showError(errorText(res));
    return loadHistory(); // otherwise onModelChange loads it
  }
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
  const max = Math.floor((m.max_total_seconds || m.max_seconds) * 1000) / 1000;
  $("model-info").textContent = `${m.family_label} · ${m.sample_rate / 1000} kHz`;
  $("seconds").max = String(max);
  // long form: beyond one window the clip is made of overlapping windows (Advanced: extend stride)
  $("seconds-hint").textContent = m.long_form
    ? `up to ${max} s; beyond ${m.max_seconds} s in overlapping ${m.max_seconds} s windows`
    : `up to ${max} s`;
  if (Number($("seconds").value) > max) $("seconds").value = String(max);
  renderParams(m);
  $("examples").replaceChildren(...(m.examples || []).map((text) => el("button", {
    type: "button", className: "chip", textContent: text, dataset: { testid: "example" },
    onclick: () => { $("prompt").value = text; $("prompt").focus(); },
  })));
  loadHistory(); // its "Use as …" buttons follow the model's audio inputs
}

function renderParams(m) {
  studio.inputs.clear();
  const fields = [...m.params, ...(m.output || [])].map((p) => { // output: format, loudness (every model)
    if (p.kind === "file") return fileField(p, m);
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
    } else if (kind === "file") {
      if (input.value) body[input.name] = input.value;
    } else if (kind === "text" && input.dataset.default === "" && input.value === "") {
      // an optional text left empty is "off", as omitting it
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
  const body = collectRequest();
  const takes = Math.max(1, Math.min(8, Number($("variations").value) || 1));
  if (takes > 1 && body.seed === undefined) body.seed = crypto.getRandomValues(new Uint32Array(1))[0];
  state.takes = [];
  for (let i = 0; i < takes; i++) {
    // variations: the same settings with seeds seed, seed + 1, ... (wrapping as the CLI's --n does)
    const take = takes > 1 ? { ...body, seed: (body.seed + i) % 4294967296 } : body;
    const res = await api("/api/jobs", { method: "POST", body: JSON.stringify(take) });
    if (!res.ok) {
      markInvalid(res);
      if (!state.takes.length) {
        setBusy(false);
        $("status-line").hidden = true;
        $("progress").hidden = true;
        return showError(errorText(res));
      }
      showError(errorText(res));
      break;
    }
    state.takes.push(res.data.id);
  }
  state.jobId = state.takes[0];
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
  const k = state.takes.indexOf(id);
  const more = k >= 0 && k + 1 < state.takes.length;
  renderJob(job, state.takes.length > 1 ? `take ${k + 1} of ${state.takes.length} · ` : "");
  if (job.status === "queued" || job.status === "running") {
    $("generate").textContent = job.status === "queued" ? "Queued…" : "Generating…";
    state.timer = setTimeout(poll, POLL_MS);
  } else if (more && job.status !== "failed") {
    loadHistory();
    state.jobId = state.takes[k + 1];
    state.timer = setTimeout(poll, POLL_MS);
  } else {
    finishJob();
    if (job.status === "done") loadHistory();
  }
}

function finishJob() {
  clearTimeout(state.timer);
  state.jobId = null;
  setBusy(false);
}

async function cancel() {
  const ids = state.takes.length ? state.takes : [state.jobId];
  for (const id of ids) if (id) await api(`/api/jobs/${id}`, { method: "DELETE" });
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

const STAGE_LABELS = {
  loading: "Loading model…", text: "Encoding the prompt…", generate: "Generating…",
  decode: "Decoding audio…", writing: "Writing file…",
};

function timing(job) {
  const parts = [];
  if (job.elapsed != null) parts.push(`${job.elapsed.toFixed(1)} s elapsed`);
  if (job.eta != null) parts.push(`about ${Math.max(1, Math.round(job.eta))} s left`);
  return parts.join(" · ");
}

function renderJob(job, prefix = "") {
  $("current").dataset.status = job.status;
  $("current").dataset.stage = job.stage || "";
  if (job.status === "queued") {
    setStatus("Queued", prefix + (job.queue_position ? `position ${job.queue_position} in the queue` : ""));
    setProgress(0, true);
  } else if (job.status === "running") {
    const label = STAGE_LABELS[job.stage] || "Working…";
    if (job.stage === "generate" && job.total) {
      const win = job.windows > 1 && job.window ? `window ${job.window} of ${job.windows} · ` : "";
      const steps = `${win}step ${job.step} / ${job.total} · ${Math.round(job.progress * 100)}%`;
      setStatus(label, prefix + [steps, timing(job)].filter(Boolean).join(" · "));
      setProgress(job.progress, false);
    } else if (job.stage === "decode" || job.stage === "writing") {
      setStatus(label, timing(job));
      setProgress(1, job.stage === "decode");
    } else {
      setStatus(label, job.stage === "loading" ? "first use only" : timing(job));
      setProgress(0, true);
    }
  } else if (job.status === "done") {
    setStatus("Done", `generated in ${job.elapsed.toFixed(1)} s · seed ${job.seed}`);
    setProgress(1, false);
    $("result-prompt").textContent = job.prompt;
    if ($("player").getAttribute("src") !== job.audio_url) {
      $("player").src = job.audio_url;
      attachWave($("player"), $("player-wave"));
      toggleSpectrogram($("player"), $("spectrogram").checked);
    }
    const stem = job.download_name.replace(/\.[a-z0-9]+$/, "");
    for (const [link, fmt] of [["download", "wav"], ["download-flac", "flac"], ["download-mp3", "mp3"]]) {
      $(link).href = fmt === job.format ? job.audio_url : `${job.audio_url}?format=${fmt}`; // made once
      $(link).download = `${stem}.${fmt}`;
    }
    $("result-info").textContent = clipInfo(job);
    $("result-loudness").textContent = job.loudness ? job.loudness.report : "";
    $("result-loudness").hidden = !job.loudness;
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
  const loud = job.loudness && job.loudness.output_lufs != null ? ` · ${job.loudness.output_lufs} LUFS` : "";
  const fmt = job.format && job.format !== "wav" ? ` · ${job.format.toUpperCase()}` : "";
  return `${job.model} · ${fmtSeconds(job.seconds)} · seed ${job.seed}${loud}${fmt}`;
}

// ---------------------------------------------------------------------------------------------- history
// The server keeps the history (SQLite in its data folder): it outlives page reloads and server restarts.

async function loadHistory() {
  const query = $("history-search").value.trim();
  const params = new URLSearchParams();
  if (query) params.set("q", query);
  if ($("history-starred").checked) params.set("starred", "true");
  const res = await api(`/api/jobs?${params}`);
  if (!res.ok) return showError(errorText(res));
  renderHistory(res.data.filter((j) => j.status === "done").slice(0, HISTORY_LIMIT));
}

function renderHistory(history) {
  $("history-empty").hidden = history.length > 0;
  $("history").replaceChildren(...history.map(historyItem));
}

function historyItem(h) {
  const audio = el("audio", { controls: true, preload: "metadata", src: h.audio_url });
  const wave = el("div", { className: "wave" });
  const uses = fileParams().map((p) => el("button", {
    type: "button", className: "link", textContent: `Use as ${p.label.toLowerCase()}`,
    dataset: { testid: `use-${p.name}` }, onclick: () => useClipAs(p.name, h),
  }));
  const item = el("li", { dataset: { testid: "history-item", jobId: h.id } },
    el("p", { className: "clip-prompt", textContent: h.title || h.prompt, title: h.prompt }),
    audio, wave,
    el("div", { className: "clip-meta" },
      el("span", { textContent: clipInfo(h) }),
      el("span", { className: "clip-actions" },
        el("button", { type: "button", className: "link", textContent: "A", title: "compare: set as A",
          dataset: { testid: "ab-set-a" }, onclick: () => setAB("a", h, audio) }),
        el("button", { type: "button", className: "link", textContent: "B", title: "compare: set as B",
          dataset: { testid: "ab-set-b" }, onclick: () => setAB("b", h, audio) }),
        ...uses,
        el("button", {
          type: "button", className: "link star", textContent: h.starred ? "★" : "☆",
          title: h.starred ? "Unstar" : "Star", dataset: { testid: "star" },
          onclick: () => annotate(h.id, { starred: !h.starred }),
        }),
        el("button", { type: "button", className: "link", textContent: "Rename", onclick: () => rename(h) }),
        el("button", { type: "button", className: "link", textContent: "Reuse settings", onclick: () => reuse(h) }),
        el("a", { href: h.audio_url, download: h.download_name, textContent: "Download" }),
        el("button", {
          type: "button", className: "link danger", textContent: "Delete", dataset: { testid: "delete" },
          onclick: () => forget(h),
        }))));
  queueMicrotask(() => attachWave(audio, wave));
  return item;
}

async function annotate(id, notes) {
  const res = await api(`/api/jobs/${id}`, { method: "PATCH", body: JSON.stringify(notes) });
  if (!res.ok) return showError(errorText(res));
  loadHistory();
}

function rename(h) {
  const title = window.prompt("Name this clip", h.title || h.prompt);
  if (title !== null) annotate(h.id, { title });
}

async function forget(h) {
  if (!window.confirm(`Delete "${h.title || h.prompt}" and its file?`)) return;
  const res = await api(`/api/history/${h.id}`, { method: "DELETE" });
  if (!res.ok) return showError(errorText(res));
  loadHistory();
}

function reuse(h) {
  $("prompt").value = h.prompt;
  if (state.models.some((m) => m.name === h.model)) {
    $("model").value = h.model;
    onModelChange();
  }
  $("seconds").value = String(h.seconds);
  $("seed").value = String(h.seed);
  const output = { format: h.format || "wav", normalize: h.normalize ?? "" };
  for (const [name, value] of Object.entries({ ...(h.params || {}), ...output })) {
    const input = $(`param-${name}`);
    if (input) input.value = String(value);
  }
  $("prompt").focus();
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
  let searchTimer = null;
  $("history-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(loadHistory, 200);
  });
  $("history-starred").addEventListener("change", loadHistory);
  $("loop").addEventListener("change", () => { $("player").loop = $("loop").checked; });
  $("spectrogram").addEventListener("change", () => toggleSpectrogram($("player"), $("spectrogram").checked));
  $("ab-switch").addEventListener("click", switchAB);
  loadModels(); // and the history, once the model's audio inputs are known (onModelChange)
});
