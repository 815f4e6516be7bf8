// Presets in the web UI: the model family's presets (GET /api/models, declared in each family's family.py)
// and the user's own (GET / POST / DELETE /api/presets, kept by the server). Picking one fills the form:
// the model (a saved preset's, or one of its family), prompt, seconds, seed and settings; settings the preset
// leaves out go back to the model's defaults. It only reads and writes the form's fields (#model, #prompt,
// #seconds, #seed, #params [data-kind]) and tells app.js of a model change by a "change" event on #model;
// it uses app.js's helpers ($, api, errorText: app.js is loaded first).
"use strict";

// chosen: the picker's value ("f:2": the model's third family preset, "u:<id>": a saved one)
const presets = { models: [], saved: [], chosen: "", model: null };

function presetNote(text, bad = false) {
  const note = $("preset-note");
  note.textContent = text;
  note.classList.toggle("error-text", bad);
}

const currentModel = () => presets.models.find((m) => m.name === $("model").value);

// The model a saved preset applies to: its own if this server has it, else one of its family.
function presetTarget(p) {
  return presets.models.find((m) => m.name === p.model) || presets.models.find((m) => m.family === p.family);
}

function renderPresets() {
  const m = currentModel();
  const select = $("preset");
  const option = (value, text, disabled = false) => {
    const o = document.createElement("option");
    Object.assign(o, { value, textContent: text, disabled });
    return o;
  };
  const groups = [];
  if (m && m.presets && m.presets.length) {
    const g = document.createElement("optgroup");
    g.label = `${m.family_label} presets`;
    g.append(...m.presets.map((p, i) => option(`f:${i}`, p.name)));
    groups.push(g);
  }
  if (presets.saved.length) {
    const g = document.createElement("optgroup");
    g.label = "Saved presets";
    g.append(...presets.saved.map((p) => {
      const target = presetTarget(p);
      const where = !target ? " (its model is not on this server)" : target.name !== p.model ? ` (on ${target.name})` : "";
      return option(`u:${p.id}`, `${p.name} · ${p.model}${where}`, !target);
    }));
    groups.push(g);
  }
  select.replaceChildren(option("", groups.length ? "Choose a preset…" : "No presets"), ...groups);
  select.value = [...select.options].some((o) => o.value === presets.chosen) ? presets.chosen : "";
  $("preset-delete").hidden = !select.value.startsWith("u:");
}

function fillSettings(settings) {
  const params = $("params");
  for (const input of params.querySelectorAll("[data-kind]")) {
    if (input.dataset.kind !== "file") input.value = input.dataset.default; // audio inputs stay as they are
  }
  const skipped = [];
  for (const [name, value] of Object.entries(settings || {})) {
    const input = $(`param-${name}`);
    if (input && params.contains(input) && input.dataset.kind !== "file") input.value = String(value);
    else skipped.push(name);
  }
  return skipped;
}

function applyPreset(value) {
  presets.chosen = value;
  if (!value) return renderPresets();
  let p;
  if (value.startsWith("u:")) {
    p = presets.saved.find((s) => `u:${s.id}` === value);
    const target = p && presetTarget(p);
    if (!target) return presetNote("this preset's model is not on this server", true);
    if ($("model").value !== target.name) {
      $("model").value = target.name;
      $("model").dispatchEvent(new Event("change")); // app.js renders the model's settings
    }
    $("seed").value = p.seed === null ? "" : String(p.seed);
  } else {
    p = currentModel().presets[Number(value.slice(2))];
  }
  $("prompt").value = p.prompt;
  $("seconds").value = String(p.seconds);
  const skipped = fillSettings(p.settings);
  renderPresets();
  presetNote(`Applied “${p.name}”` + (skipped.length ? ` · not taken by this model: ${skipped.join(", ")}` : ""));
}

// The form's settings that differ from the model's defaults (a preset keeps what the user chose; the rest
// is the checkpoint's), as the server checks them: numbers as numbers, audio inputs never.
function formSettings() {
  const settings = {};
  for (const input of $("params").querySelectorAll("[data-kind]")) {
    const kind = input.dataset.kind;
    if (kind === "file" || input.value === input.dataset.default || input.value.trim() === "") continue;
    settings[input.name] = kind === "int" || kind === "float" ? Number(input.value) : input.value;
  }
  return settings;
}

async function savePreset() {
  const name = $("preset-name").value;
  const body = {
    name, model: $("model").value, prompt: $("prompt").value,
    seconds: Number($("seconds").value), settings: formSettings(),
  };
  if ($("seed").value.trim() !== "") body.seed = Number($("seed").value);
  const res = await api("/api/presets", { method: "POST", body: JSON.stringify(body) });
  if (!res.ok) return presetNote(errorText(res), true);
  $("preset-name").value = "";
  await loadSavedPresets();
  presets.chosen = `u:${res.data.id}`;
  renderPresets();
  presetNote(`Saved “${res.data.name}”`);
}

async function deletePreset() {
  const p = presets.saved.find((s) => `u:${s.id}` === presets.chosen);
  if (!p || !window.confirm(`Delete the preset "${p.name}"?`)) return;
  const res = await api(`/api/presets/${p.id}`, { method: "DELETE" });
  if (!res.ok) return presetNote(errorText(res), true);
  presets.chosen = "";
  await loadSavedPresets();
  renderPresets();
  presetNote(`Deleted “${p.name}”`);
}

async function loadSavedPresets() {
  const res = await api("/api/presets");
  if (!res.ok) return presetNote(errorText(res), true);
  presets.saved = res.data;
}

document.addEventListener("DOMContentLoaded", async () => {
  $("preset").addEventListener("change", (e) => applyPreset(e.target.value));
  $("preset-save").addEventListener("click", savePreset);
  $("preset-delete").addEventListener("click", deletePreset);
  $("preset-name").addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); savePreset(); }
  });
  // app.js re-renders #params whenever the model changes (also without a "change" event, e.g. "Reuse
  // settings"): the family's presets follow it
  new MutationObserver(() => {
    if ($("model").value !== presets.model && presets.chosen.startsWith("f:")) presets.chosen = "";
    presets.model = $("model").value; // another model: its family's presets
    renderPresets();
  }).observe($("params"), { childList: true });
  const res = await api("/api/models");
  if (res.ok) presets.models = res.data;
  await loadSavedPresets();
  renderPresets();
});
