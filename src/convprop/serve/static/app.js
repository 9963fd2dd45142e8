// convprop serve: the page.  Everything it draws comes from the JSON endpoints (docs/serve.md);
// the pictures are PNG tiles made by the server, the prediction bars and the curves are drawn here.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  dropped: null,      // a dropped image's data URL, sent as is until the user draws or clears
  drawn: false,       // anything on the pad
  cls: "auto",        // the class of the backward pass: "auto" follows the prediction
  predictBusy: false, predictAgain: false,
  analyzeBusy: false, analyzeAgain: false,
  training: false, analyses: 0,
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(path, body) {
  const init = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

function showError(err) {
  const p = $("#error");
  p.hidden = !err;
  p.textContent = err ? String(err.message || err) : "";
}

// ------------------------------------------------------------------ the drawing pad
const pad = $("#pad");
const ctx = pad.getContext("2d");

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  state.drawn = false;
  state.dropped = null;
  $("#drop-hint").hidden = false;
}

function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

let last = null;
function stroke(a, b) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 22;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(a[0], a[1]);
  ctx.lineTo(b[0], b[1]);
  ctx.stroke();
}

// Pointer events cover the mouse, touch and pens (touch-action: none keeps the page from scrolling).
pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  if (state.dropped) clearPad();
  pad.setPointerCapture(e.pointerId);
  last = padPoint(e);
  stroke(last, last);
  state.drawn = true;
  $("#drop-hint").hidden = true;
  predict();
});
pad.addEventListener("pointermove", (e) => {
  if (!last) return;
  e.preventDefault();
  const p = padPoint(e);
  stroke(last, p);
  last = p;
  predict();
});
function endStroke() {
  if (!last) return;
  last = null;
  analyze();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("#clear").addEventListener("click", () => {
  clearPad();
  $("#bars").innerHTML = "";
  $("#loss").innerHTML = "";
  const layers = $("#layers");
  layers.innerHTML = '<p class="placeholder">Draw a digit to see its forward and backward pass.</p>';
  layers.dataset.state = "empty";
  showError(null);
});

function useImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      clearPad();
      const s = Math.min(pad.width / img.width, pad.height / img.height);
      ctx.drawImage(img, (pad.width - img.width * s) / 2, (pad.height - img.height * s) / 2,
                    img.width * s, img.height * s);
      state.dropped = reader.result;
      $("#drop-hint").hidden = true;
      predict();
      analyze();
    };
    img.onerror = () => {  // the server says why (it decodes what the browser cannot show, or refuses it)
      state.dropped = reader.result;
      predict();
    };
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
}
pad.addEventListener("dragover", (e) => { e.preventDefault(); pad.classList.add("dragover"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dragover"));
pad.addEventListener("drop", (e) => {
  e.preventDefault();
  pad.classList.remove("dragover");
  useImage(e.dataTransfer.files[0]);
});
$("#file").addEventListener("change", (e) => useImage(e.target.files[0]));

// The drawing is sent at half size (140×140): the server scales the ink into 20×20 anyway.
const half = document.createElement("canvas");
half.width = pad.width / 2;
half.height = pad.height / 2;
function input() {
  if (state.dropped) return { image: state.dropped };
  const h = half.getContext("2d");
  h.imageSmoothingQuality = "high";
  h.drawImage(pad, 0, 0, half.width, half.height);
  return { image: half.toDataURL("image/png") };
}

// ------------------------------------------------------------------ prediction bars
for (let k = 0; k < 10; k++) $("#cls").append(new Option(String(k), String(k)));
$("#cls").addEventListener("change", (e) => { state.cls = e.target.value; analyze(); });

function showDigit(digit) {
  const c = $("#digit").getContext("2d");
  const im = c.createImageData(28, 28);
  for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
    const v = digit[y][x], i = 4 * (28 * y + x);
    im.data[i] = im.data[i + 1] = im.data[i + 2] = v;
    im.data[i + 3] = 255;
  }
  c.putImageData(im, 0, 0);
}

function showBars(probs, predicted, selected) {
  const bars = $("#bars");
  bars.innerHTML = "";
  bars.dataset.predicted = String(predicted);
  probs.forEach((p, k) => {
    const row = el("div", "bar" + (k === predicted ? " top" : "") + (k === selected ? " selected" : ""));
    row.dataset.k = String(k);
    const fill = el("div", "fill");
    fill.style.width = (100 * p).toFixed(1) + "%";
    const track = el("div", "track");
    track.append(fill);
    row.append(el("span", "k", String(k)), track, el("span", "p", (100 * p).toFixed(1) + "%"));
    row.title = "show the backward pass for class " + k;
    row.addEventListener("click", () => { state.cls = String(k); $("#cls").value = String(k); analyze(); });
    bars.append(row);
  });
}

function selectedClass(predicted) {
  return state.cls === "auto" ? predicted : Number(state.cls);
}

// Live while drawing: one request in flight, the latest drawing sent when it returns.
async function predict() {
  if (state.predictBusy) { state.predictAgain = true; return; }
  state.predictBusy = true;
  try {
    const j = await api("/api/predict", input());
    showDigit(j.digit);
    showBars(j.probs, j.predicted, selectedClass(j.predicted));
    showError(null);
  } catch (err) {
    showError(err);
  } finally {
    state.predictBusy = false;
    if (state.predictAgain) { state.predictAgain = false; predict(); }
  }
}

// ------------------------------------------------------------------ the layers, forward and backward
const CMAPS = { signed: ["blue −", "red +"], gray: ["black", "white"], hot: ["black 0", "white"] };

function fmt(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(1) : v.toPrecision(3).replace(/\.?0+$/, "");
}

function panel(enc, caption, maxWidth) {
  const fig = el("figure", "panel");
  const img = new Image();
  img.src = "data:image/png;base64," + enc.png;
  const [h, w] = enc.size;
  const s = Math.max(1, Math.min(8, Math.floor((maxWidth || 340) / w)));
  img.width = w * s;
  img.height = Math.max(h * s, 14);
  img.style.width = img.width + "px";
  img.style.height = img.height + "px";
  const [lo, hi] = CMAPS[enc.cmap];
  fig.append(img, el("figcaption", null,
    `${caption} (${enc.shape.join("×")}; ${lo} ${fmt(enc.min)} … ${hi} ${fmt(enc.max)})`));
  return fig;
}

function equation(text) {
  return el("code", "eq", text);
}

function column(title) {
  const col = el("div", "col");
  col.append(el("div", "title", title));
  const panels = el("div", "panels");
  col.append(panels);
  return [col, panels];
}

function convPieces(layer) {
  const pc = layer.pieces;
  const box = el("div", "pieces");
  box.append(el("div", "title", "∂A as a transposed convolution with K: each output channel o scatters ∂Z_o·K_o back; "
    + "the largest ones, then their sum over all channels"));
  box.append(equation(pc.transposed_equation));
  let panels = el("div", "panels");
  for (const t of pc.transposed) {
    const group = el("div", "panels group");
    group.append(panel(t.dz, `∂Z_${t.channel}`, 90), panel(t.kernel, `K_${t.channel}`, 90),
                 panel(t.contribution, `∂Z_${t.channel} ⋆ᵀ K_${t.channel}`, 90));
    panels.append(group);
  }
  panels.append(panel(layer.grad_input, "Σ over channels = ∂A", 200));
  box.append(panels);
  box.append(el("div", "title", `∂W: the input patch under every position ij times ∂Z_ij, summed (output channel ${pc.channel}, `
    + `the positions with the largest |∂Z_ij|; Σ over all positions equals ∂W_${pc.channel} to ${fmt(pc.sum_check)})`));
  box.append(equation(pc.patch_equation));
  panels = el("div", "panels");
  for (const q of pc.patches) {
    const group = el("div", "panels group");
    group.append(panel(q.patch, `A_patch(${q.position.join(",")})`, 100),
                 panel(q.product, `× ∂Z = ${fmt(q.dz)}`, 100));
    panels.append(group);
  }
  box.append(panels);
  if (layer.parameters.bias) {
    box.append(equation(pc.bias_equation));
    box.append(panel(layer.parameters.bias.grad, "∂B", 200));
  }
  return box;
}

function renderLayers(fwd, bwd) {
  const root = $("#layers");
  root.innerHTML = "";
  root.dataset.class = String(bwd.class);
  const head = el("div", "layer");
  head.append(el("h3", null, `Backward pass of the loss for class ${bwd.class}: L = ${fmt(bwd.loss)} `
    + `(p = ${(100 * bwd.probs[bwd.class]).toFixed(1)} %)`));
  root.append(head);

  // the input row: x, and the gradient that arrives at it
  const row = el("div", "layer");
  row.append(el("h3", null, "input x "));
  row.querySelector("h3").append(el("span", "shape", `(${fwd.input.shape.join(", ")})`));
  const cols = el("div", "cols");
  const [f, fp] = column("forward: x, normalised as in training");
  fp.append(panel(fwd.input, "x", 168));
  const [b, bp] = column("backward: ∂L/∂x, and the saliency |∂L/∂x|");
  bp.append(panel(bwd.input_grad, "∂L/∂x", 168), panel(bwd.saliency, "|∂L/∂x|", 168));
  cols.append(f, b);
  row.append(cols);
  root.append(row);

  fwd.layers.forEach((fl, k) => {
    const bl = bwd.layers[k];
    const box = el("div", "layer");
    box.dataset.type = fl.type;
    const h3 = el("h3", null, fl.label + " ");
    h3.append(el("span", "shape", "→ (" + fl.output.shape.join(", ") + ")"));
    box.append(h3);
    const cols = el("div", "cols");
    const [f, fp] = column("forward: this layer's output");
    fp.append(panel(fl.output, "output", 480));
    const [b, bp] = column("backward: the gradient at this layer's output, and what its backward makes of it");
    bp.classList.add("grad");
    bp.append(panel(bl.grad_output, "∂L/∂(output)", 480));
    if (bl.routing) {
      const what = fl.type === "MaxPool2d" ? "argmax mask: where each window's maximum is" : "even spread: 1/r per window";
      bp.append(panel(bl.routing, what, 480), panel(bl.grad_input, "∂L/∂(input)", 480));
    }
    for (const [name, p] of Object.entries(bl.parameters)) {
      if (fl.type === "Conv2d" && name === "weight") bp.append(panel(p.value, "K = weight", 200));
      bp.append(panel(p.grad, `∂L/∂${name}`, 400));
    }
    if (bl.equation) b.append(equation(bl.equation));
    if (bl.routing_equation) b.append(document.createTextNode(" "), equation(bl.routing_equation));
    cols.append(f, b);
    box.append(cols);
    if (bl.pieces) {
      const more = el("details", "more");
      more.open = true;
      more.append(el("summary", null, "the pieces of the conv layer's backward"), convPieces(bl));
      box.append(more);
    }
    root.append(box);
  });
  root.dataset.state = "ready";
}

async function analyze() {
  if (!state.drawn && !state.dropped) return;
  if (state.analyzeBusy) { state.analyzeAgain = true; return; }
  state.analyzeBusy = true;
  try {
    const body = { ...input(), format: "png" };
    if (state.cls !== "auto") body.class = Number(state.cls);
    const [fwd, bwd] = await Promise.all([api("/api/forward", body), api("/api/backward", body)]);
    showDigit(fwd.digit);
    showBars(bwd.probs, bwd.predicted, bwd.class);
    $("#loss").innerHTML = "";
    $("#loss").append(el("div", null, `L = ${fmt(bwd.loss)} for class ${bwd.class}`), equation(lossEquation));
    renderLayers(fwd, bwd);
    state.analyses += 1;
    document.body.dataset.analyses = String(state.analyses);
    showError(null);
  } catch (err) {
    showError(err);
  } finally {
    state.analyzeBusy = false;
    if (state.analyzeAgain) { state.analyzeAgain = false; analyze(); }
  }
}

// ------------------------------------------------------------------ tabs
document.querySelectorAll("nav .tab").forEach((t) => t.addEventListener("click", () => {
  document.querySelectorAll("nav .tab").forEach((u) => u.classList.toggle("active", u === t));
  document.querySelectorAll(".tab-page").forEach((p) => { p.hidden = p.id !== "tab-" + t.dataset.tab; });
}));

// ------------------------------------------------------------------ training
const curves = { run: null, points: [], epochs: [] };

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
  state.training = s.running;
  $("#train-start").disabled = s.running;
  $("#train-stop").disabled = !s.running;
  $("#train-restore").disabled = s.running;
  const e = s.epochs[s.epochs.length - 1];
  $("#train-status").textContent = (s.running ? "Training: " : "Not training. ") + `step ${s.step}, `
    + `${s.epoch} epoch${s.epoch === 1 ? "" : "s"} done` + (e ? `, test accuracy ${(100 * e.test_acc).toFixed(1)} %` : "")
    + (s.error ? ` — stopped: ${s.error}` : "");
  if (s.filters) {
    const f = $("#filters");
    f.innerHTML = "";
    f.append(panel(s.filters, "first-layer kernels", 600));
  }
  drawCurves();
}

let events = null;
function listen() {
  if (events) return;
  events = new EventSource("/api/train/events");
  events.onmessage = (ev) => onTrainState(JSON.parse(ev.data));
}

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
    analyze();
  } catch (err) { $("#train-status").textContent = String(err.message); }
});

// While training, redraw the digit's passes as the weights change.
setInterval(() => { if (state.training) analyze(); }, 1500);

// ------------------------------------------------------------------ start
let lossEquation = "";
(async () => {
  clearPad();
  try {
    const m = await api("/api/model");
    lossEquation = m.equations.loss;
    const acc = m.test_accuracy ? `, test accuracy ${(100 * m.test_accuracy).toFixed(2)} %` : "";
    $("#model-info").textContent = `Model: ${m.model || "model"} (${m.layers.length} layers) from ${m.source}${acc}.`;
  } catch (err) { showError(err); }
  listen();
})();
