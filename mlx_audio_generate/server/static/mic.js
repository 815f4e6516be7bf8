// mlx-audio-generate web UI: recording an audio input (melody, audio prompt, init / inpaint audio) from the
// microphone. The Record plugin of the shipped wavesurfer.js records and draws the waveform live. The server
// checks uploads with libsndfile, which cannot read what browsers record (WebM / Ogg / MP4 with Opus or
// AAC), so the browser decodes the recording (decodeAudioData) and the page uploads it as a 16-bit PCM WAV
// made here. Nothing leaves the page but that upload to this server; where the browser cannot record
// (no getUserMedia or MediaRecorder: an insecure origin, an old browser) no Record button is shown.
"use strict";

const MIC_MAX_SECONDS = 120; // a recording stops by itself here (an input, not a session)
const MIC_RATE = 48000; // the rate recordings are decoded at (what microphones deliver; the server resamples)

function canRecord() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder
    && window.WaveSurfer && WaveSurfer.Record);
}

// An AudioBuffer as a 16-bit PCM WAV file (RIFF header + interleaved samples, little-endian).
function wavBlob(buffer) {
  const channels = buffer.numberOfChannels, frames = buffer.length, rate = buffer.sampleRate;
  const bytes = frames * channels * 2;
  const view = new DataView(new ArrayBuffer(44 + bytes));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + bytes, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); // PCM
  view.setUint16(22, channels, true); view.setUint32(24, rate, true);
  view.setUint32(28, rate * channels * 2, true); view.setUint16(32, channels * 2, true);
  view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, bytes, true);
  const planes = Array.from({ length: channels }, (_, c) => buffer.getChannelData(c));
  let at = 44;
  for (let i = 0; i < frames; i++) {
    for (const plane of planes) {
      const x = Math.max(-1, Math.min(1, plane[i]));
      view.setInt16(at, x < 0 ? x * 0x8000 : x * 0x7fff, true);
      at += 2;
    }
  }
  return new Blob([view], { type: "audio/wav" });
}

// What MediaRecorder made, decoded by the browser, as a WAV.
async function recordingAsWav(blob) {
  const ctx = new OfflineAudioContext(1, 1, MIC_RATE); // decodes without an output device
  return wavBlob(await ctx.decodeAudioData(await blob.arrayBuffer()));
}

// A Record / Stop button drawing the recording live into `wave`: `onStart()` before recording (clear the
// old input), `onWav(blob)` with the WAV after Stop, `onError(message)`. null where recording is impossible.
function micButton(testid, wave, { onStart, onWav, onError }) {
  if (!canRecord()) return null;
  const button = el("button", { type: "button", className: "record", textContent: "● Record",
    title: "record from the microphone" });
  button.dataset.testid = testid;
  let ws = null, rec = null;
  const idle = () => {
    button.textContent = "● Record";
    button.removeAttribute("aria-pressed");
    // the microphone first: destroying the plugin with the microphone open closes its AudioContext twice
    if (rec) rec.stopMic();
    if (ws) ws.destroy();
    ws = rec = null;
  };
  button.addEventListener("click", async () => {
    if (rec) { rec.stopRecording(); return; }
    onStart();
    ws = WaveSurfer.create({ ...WAVE_STYLE, container: wave, interact: false });
    rec = ws.registerPlugin(WaveSurfer.Record.create({
      renderRecordedAudio: false, // the uploaded WAV is drawn instead (a blob: fetch would break the CSP)
      scrollingWaveform: true, scrollingWaveformWindow: 5, // the last 5 s, live
    }));
    rec.on("record-progress", (ms) => {
      button.textContent = `■ Stop (${(ms / 1000).toFixed(1)} s)`;
      if (ms >= MIC_MAX_SECONDS * 1000) rec.stopRecording();
    });
    rec.on("record-end", async (blob) => {
      idle();
      try {
        onWav(await recordingAsWav(blob));
      } catch (err) {
        onError(`cannot read the recording (${err.message || err})`);
      }
    });
    try {
      await rec.startRecording();
      button.textContent = "■ Stop (0.0 s)";
      button.setAttribute("aria-pressed", "true");
    } catch (err) {
      idle();
      onError(`cannot record: ${err.message || err}`);
    }
  });
  return button;
}
