// The layers' rows: each layer's output (forward, left) and the gradient through it (backward, right),
// as the PNG tiles the server made, with the equations of each step.
import { $, el, fmt } from "./dom.js";

// the two ends of each colour map, as the captions name them
const CMAPS = { signed: ["blue −", "red +"], gray: ["black", "white"], hot: ["black 0", "white"] };

export function panel(enc, caption, maxWidth) {
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
export function equation(text) {
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
export function renderLayers(fwd, bwd) {
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
