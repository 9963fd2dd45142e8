// The Training tab: start, stop and restore training in the server, the loss and accuracy curves and the
// first-layer filters as its states stream in (server-sent events).
import { api, listen } from "./api.js";
import { $, fmt } from "./dom.js";
import { panel } from "./layers.js";

const curves = { run: null, points: [], epochs: [] };
let training = false;

function chart(canvas, series, ymin, ymax, xmax, label) {
  const c = canvas.getContext("2d"), W = canvas.width, H = canvas.height, L = 44, B = 22, T = 10, R = 10;
  c.clearRect(0, 0, W, H);
  c.fillStyle = "#fff";
  c.fillRect(0, 0, W, H);
  c.strokeStyle = "#ccc";
  c.fillStyle = "#555";
  c.font = "11px sans-serif";
  const X = (x) => L + (W - L - R) * x / Math.max(xmax, 1);
  const Y = (y) => H - B - (H - B - T) * (y - ymin) / ((ymax - ymin) || 1);
  for (let i = 0; i <= 4; i++) {
    const y = ymin + (ymax - ymin) * i / 4;
    c.beginPath(); c.moveTo(L, Y(y)); c.lineTo(W - R, Y(y)); c.stroke();
    c.fillText(fmt(y), 4, Y(y) + 4);
  }
  c.fillText(`${label}   step ${xmax}`, L, H - 6);
  for (const s of series) {
    c.strokeStyle = c.fillStyle = s.color;
    c.lineWidth = s.width || 1;
    if (s.dots) {
      for (const [x, y] of s.points) { c.beginPath(); c.arc(X(x), Y(y), 3.5, 0, 7); c.fill(); }
      continue;
    }
    c.beginPath();
    s.points.forEach(([x, y], i) => (i ? c.lineTo(X(x), Y(y)) : c.moveTo(X(x), Y(y))));
    c.stroke();
  }
}

function runningMean(points, col, beta) {
  let m = null;
  return points.map((p, i) => {
    m = i === 0 ? p[col] : beta * m + (1 - beta) * p[col];
    return [p[0], m];
  });
}

function drawCurves() {
  const pts = curves.points, xmax = pts.length ? pts[pts.length - 1][0] : 1;
  const lossMax = Math.max(0.5, ...pts.slice(0, 50).map((p) => p[1]));
  chart($("#loss-chart"), [
    { points: pts.map((p) => [p[0], p[1]]), color: "#c9d6ee" },
    { points: runningMean(pts, 1, 0.95), color: "#2a62c9", width: 2 },
  ], 0, Math.min(lossMax, 3), xmax, "cross-entropy");
  chart($("#acc-chart"), [
    { points: pts.map((p) => [p[0], p[2]]), color: "#d9e8d0" },
    { points: runningMean(pts, 2, 0.95), color: "#3a8a2a", width: 2 },
    { points: curves.epochs.map((e) => [e.step, e.test_acc]), color: "#d2691e", dots: true },
  ], 0, 1, xmax, "accuracy");
  $("#loss-chart").dataset.points = String(pts.length);
}

function onTrainState(s) {
  if (s.run !== curves.run) { curves.run = s.run; curves.points = []; }
  const start = s.next - s.points.length;  // the index of s.points[0] in the server's list
  curves.points.push(...s.points.slice(Math.max(0, curves.points.length - start)));
  curves.epochs = s.epochs;
  training = s.running;
  $("#train-start").disabled = s.running;
  $("#train-stop").disabled = !s.running;
  $("#train-restore").disabled = s.running;
  const e = s.epochs[s.epochs.length - 1];
  $("#train-status").textContent = (s.running ? "Training: " : "Not training. ") + `step ${s.step}, `
    + `${s.progress} done` + (e ? `, test accuracy ${(100 * e.test_acc).toFixed(1)} %` : "")
    + (s.error ? ` — stopped: ${s.error}` : "");
  if (s.filters) {
    const f = $("#filters");
    f.innerHTML = "";
    f.append(panel(s.filters, "first-layer kernels", 600));
  }
  drawCurves();
}

// The buttons; onWeightsChanged() after a restore and every 1.5 s while training (the digit's passes redrawn).
export function setupTraining(onWeightsChanged) {
  $("#train-start").addEventListener("click", async () => {
    try {
      const lr = Number($("#train-lr").value);
      onTrainState(await api("/api/train/start", { reset: $("#train-reset").checked, lr }));
    } catch (err) { $("#train-status").textContent = String(err.message || err); }
  });
  $("#train-stop").addEventListener("click", async () => {
    try { onTrainState(await api("/api/train/stop", {})); } catch (err) { $("#train-status").textContent = String(err.message); }
  });
  $("#train-restore").addEventListener("click", async () => {
    try {
      onTrainState(await api("/api/train/restore", {}));
      onWeightsChanged();
    } catch (err) { $("#train-status").textContent = String(err.message); }
  });

  setInterval(() => { if (training) onWeightsChanged(); }, 1500);
}

// The training states, as the server streams them.
export function followTraining() {
  listen("/api/train/events", onTrainState);
}
