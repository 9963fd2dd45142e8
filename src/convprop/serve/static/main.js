// convprop serve: the page.  Everything it draws comes from the JSON endpoints (docs/serve.md);
// the pictures are PNG tiles made by the server, the prediction bars and the curves are drawn here.
// This module wires the others: the pad (draw.js), the prediction (bars.js), the layers' passes
// (layers.js) and the Training tab (train.js), all talking to the server through api.js.
import { api } from "./api.js";
import { setClassNames, showBars, showDigit } from "./bars.js";
import { $, el, fmt, showError } from "./dom.js";
import { createPad } from "./draw.js";
import { equation, renderLayers } from "./layers.js";
import { followTraining, setupTraining } from "./train.js";

const state = {
  cls: "auto",        // the class of the backward pass: "auto" is the runner-up (the server's default)
  predictBusy: false, predictAgain: false,
  analyzeBusy: false, analyzeAgain: false,
  analyses: 0,
  lossEquation: "",
};

const pad = createPad($("#pad"), { onChange: predict, onDone: analyze });
$("#file").addEventListener("change", (e) => pad.useImage(e.target.files[0]));
$("#clear").addEventListener("click", () => {
  pad.clear();
  $("#bars").innerHTML = "";
  $("#loss").innerHTML = "";
  const layers = $("#layers");
  layers.innerHTML = '<p class="placeholder">Draw a digit to see its forward and backward pass.</p>';
  layers.dataset.state = "empty";
  showError(null);
});

// ------------------------------------------------------------------ the class of the backward pass
for (let k = 0; k < 10; k++) $("#cls").append(new Option(String(k), String(k)));
$("#cls").addEventListener("change", (e) => { state.cls = e.target.value; analyze(); });

function pick(k) {
  state.cls = String(k);
  $("#cls").value = String(k);
  analyze();
}

// The runner-up, the most likely class after the predicted one: at p ≈ 1 the predicted class's gradients are
// ~1e-6 (speckle); the runner-up's show what would make the drawing more like it.
function selectedClass(probs) {
  if (state.cls !== "auto") return Number(state.cls);
  const order = probs.map((p, k) => [p, k]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  return order[Math.min(1, order.length - 1)][1];
}

// ------------------------------------------------------------------ the passes
// Live while drawing: one request in flight, the latest drawing sent when it returns.
async function predict() {
  if (state.predictBusy) { state.predictAgain = true; return; }
  state.predictBusy = true;
  try {
    const j = await api("/api/predict", pad.input());
    showDigit(j.digit);
    showBars(j.probs, j.predicted, selectedClass(j.probs), pick);
    showError(null);
  } catch (err) {
    showError(err);
  } finally {
    state.predictBusy = false;
    if (state.predictAgain) { state.predictAgain = false; predict(); }
  }
}

// Both passes of the drawing, every layer drawn; body.dataset.analyses counts the ones shown.
async function analyze() {
  if (pad.empty()) return;
  if (state.analyzeBusy) { state.analyzeAgain = true; return; }
  state.analyzeBusy = true;
  try {
    const body = { ...pad.input(), format: "png" };
    if (state.cls !== "auto") body.class = Number(state.cls);
    const [fwd, bwd] = await Promise.all([api("/api/forward", body), api("/api/backward", body)]);
    showDigit(fwd.digit);
    showBars(bwd.probs, bwd.predicted, bwd.class, pick);
    $("#loss").innerHTML = "";
    $("#loss").append(el("div", null, `L = ${fmt(bwd.loss)} for class ${bwd.class}`), equation(state.lossEquation));
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

setupTraining(analyze);

// ------------------------------------------------------------------ start
pad.clear();
try {
  const m = await api("/api/model");
  state.lossEquation = m.equations.loss;
  setClassNames(m.class_names);
  const acc = m.test_accuracy ? `, test accuracy ${(100 * m.test_accuracy).toFixed(2)} %` : "";
  $("#model-info").textContent = `Model: ${m.model || "model"} (${m.layers.length} layers) from ${m.source}${acc}.`;
} catch (err) { showError(err); }
followTraining();
