// mlx-audio-generate web UI, the studio parts: waveforms (wavesurfer.js, shipped in static/vendor with its
// licence), audio inputs (upload or a clip from the history, with a region selected on the waveform), the
// spectrogram, loop and A/B between two takes. app.js calls these; no build step.
"use strict";

const studio = {
  waves: new Map(), // audio element -> WaveSurfer
  inputs: new Map(), // file setting name -> { id, label, wave, regions }
  ab: { a: null, b: null, playing: null },
};

const WAVE_STYLE = { height: 56, waveColor: "#9aa5b1", progressColor: "#3b5bdb", cursorColor: "#1b1f24",
  barWidth: 2, barGap: 1, barRadius: 1, normalize: true, dragToSeek: true };

// A waveform drawn over an <audio> element (which keeps playing the sound, so its controls still work).
function attachWave(audio, container, options = {}) {
  const old = studio.waves.get(audio);
  if (old) old.destroy();
  if (!window.WaveSurfer) return null; // the vendor script failed to load: the <audio> still works
  // the URL given again: wavesurfer loads (and decodes for the peaks) what it is told, else it clears src
  const ws = WaveSurfer.create({
    ...WAVE_STYLE, container, media: audio, url: audio.getAttribute("src"), ...options });
  studio.waves.set(audio, ws);
  return ws;
}

function toggleSpectrogram(audio, on) {
  const ws = studio.waves.get(audio);
  if (!ws || !WaveSurfer.Spectrogram) return;
  if (ws._spectrogram) { ws._spectrogram.destroy(); ws._spectrogram = null; }
  if (on) ws._spectrogram = ws.registerPlugin(WaveSurfer.Spectrogram.create({ labels: true, height: 128 }));
}

// ------------------------------------------------------------------------------------- audio inputs

// The settings whose value is a region on the waveform of file setting `name` (from the family's schema).
function regionParams(model, name) {
  return model.params.filter((p) => p.region && p.region.of === name);
}

const round2 = (x) => Math.round(x * 100) / 100;

function writeRegions(model, name, regions) {
  const list = regions.getRegions().slice().sort((r, s) => r.start - s.start);
  for (const p of regionParams(model, name)) {
    const input = $(`param-${p.name}`);
    if (!input) continue;
    if (p.region.role === "list") input.value = list.map((r) => `${round2(r.start)}:${round2(r.end)}`).join(",");
    else if (list.length) input.value = String(round2(p.region.role === "start" ? list[0].start : list[0].end));
    else input.value = "";
  }
}

// A file setting: upload, record (mic.js) or pick a history clip via "Use as", then a waveform to select
// regions on.
function fileField(p, model) {
  const id = `param-${p.name}`;
  const value = el("input", { type: "hidden", id, name: p.name, value: "" });
  value.dataset.kind = "file";
  value.dataset.default = "";
  value.dataset.testid = id;
  const picker = el("input", { type: "file", accept: "audio/*", id: `${id}-file` });
  picker.dataset.testid = `${id}-file`;
  const name = el("span", { className: "hint", textContent: "none" });
  const clear = el("button", { type: "button", className: "link", textContent: "Clear", hidden: true });
  const player = el("audio", { controls: true, preload: "metadata", hidden: true });
  const wave = el("div", { className: "wave input-wave" });
  wave.dataset.testid = `${id}-wave`;
  const selectable = regionParams(model, p.name);
  const hint = el("small", { className: "hint", textContent: p.help + (selectable.length
    ? " · drag on the waveform to select the region" : "") });
  const field = el("div", { className: "field wide file-field" },
    el("label", { htmlFor: picker.id, textContent: p.label }), el("div", { className: "file-pick" }, picker),
    el("div", { className: "file-line" }, name, clear), player, wave, hint, value);

  const show = (ref, label, url) => {
    value.value = ref;
    name.textContent = label;
    clear.hidden = false;
    player.hidden = false;
    player.src = url;
    // dragging selects a region there (not seeking); a click still seeks
    const ws = attachWave(player, wave, selectable.length ? { dragToSeek: false } : {});
    if (ws && selectable.length && WaveSurfer.Regions) {
      const regions = ws.registerPlugin(WaveSurfer.Regions.create());
      regions.enableDragSelection({ color: "rgba(59, 91, 219, 0.25)" });
      const single = selectable.every((q) => q.region.role !== "list");
      regions.on("region-created", (r) => {
        if (single) for (const other of regions.getRegions()) if (other !== r) other.remove();
        writeRegions(model, p.name, regions);
      });
      regions.on("region-updated", () => writeRegions(model, p.name, regions));
      regions.on("region-removed", () => writeRegions(model, p.name, regions));
      studio.inputs.set(p.name, { regions });
    }
  };
  const upload = async (body, filename) => {
    name.textContent = `uploading ${filename}…`;
    const res = await api(`/api/uploads?name=${encodeURIComponent(filename)}`, {
      method: "POST", body, headers: { "Content-Type": "application/octet-stream" } });
    if (!res.ok) { name.textContent = "none"; return showError(errorText(res)); }
    const u = res.data;
    show(u.id, `${u.name} · ${fmtSeconds(u.seconds)} · ${u.sample_rate / 1000} kHz`, u.audio_url);
  };
  picker.addEventListener("change", async () => {
    const file = picker.files[0];
    if (!file) return;
    await upload(file, file.name);
    picker.value = "";
  });
  const record = micButton(`${id}-record`, wave, {
    onStart: () => { clear.click(); name.textContent = "recording…"; },
    onWav: (blob) => upload(blob, "recording.wav"),
    onError: (message) => { name.textContent = "none"; showError(message); },
  });
  if (record) field.querySelector(".file-pick").append(record);
  clear.addEventListener("click", () => {
    value.value = "";
    name.textContent = "none";
    clear.hidden = true;
    player.hidden = true;
    const ws = studio.waves.get(player);
    if (ws) { ws.destroy(); studio.waves.delete(player); }
    studio.inputs.delete(p.name);
    for (const q of selectable) { const i = $(`param-${q.name}`); if (i) i.value = ""; }
  });
  field.useClip = (job) => show(job.id, `take: ${job.title || job.prompt} · ${fmtSeconds(job.seconds)}`,
    job.audio_url);
  return field;
}

// The file settings of the selected model, for "Use as …" buttons in the history.
function fileParams() {
  const m = selectedModel();
  return m ? m.params.filter((p) => p.kind === "file") : [];
}

function useClipAs(paramName, job) {
  const input = $(`param-${paramName}`);
  if (!input) return;
  $("advanced").open = true;
  input.closest(".file-field").useClip(job);
  input.closest(".file-field").scrollIntoView({ block: "center" });
}

// ------------------------------------------------------------------------------------------- A / B

function setAB(slot, job, audio) {
  studio.ab[slot] = { job, audio };
  renderAB();
}

function renderAB() {
  const { a, b } = studio.ab;
  $("ab").hidden = !(a || b);
  $("ab-a").textContent = a ? `A: ${a.job.title || a.job.prompt} (seed ${a.job.seed})` : "A: —";
  $("ab-b").textContent = b ? `B: ${b.job.title || b.job.prompt} (seed ${b.job.seed})` : "B: —";
  $("ab-switch").disabled = !(a && b);
}

// Play the other take from the same moment: a quick, level comparison of two takes.
function switchAB() {
  const { a, b, playing } = studio.ab;
  if (!a || !b) return;
  const next = playing === "a" ? "b" : "a";
  const from = playing ? studio.ab[playing] : null;
  const to = studio.ab[next];
  const t = from ? from.audio.currentTime : 0;
  if (from) from.audio.pause();
  to.audio.currentTime = Math.min(t, to.audio.duration || t);
  to.audio.play();
  studio.ab.playing = next;
  $("ab-playing").textContent = `playing ${next.toUpperCase()}`;
}
