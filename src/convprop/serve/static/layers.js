// The layers' rows: each layer's output (forward, left) and the gradient through it (backward, right),
// as the PNG tiles the server made, with the equations of each step.
import { $, el, fmt } from "./dom.js";

// What a picture's colours mean, with its numbers: the scale a learner reads the picture by.
export function scale(enc) {
  if (enc.cmap === "signed") return `blue −${fmt(enc.max)} … white 0 … red +${fmt(enc.max)}`;
  if (enc.cmap === "hot") return `black 0 … white ${fmt(enc.max)} (the largest)`;
  return `black ${fmt(enc.min)} … white ${fmt(enc.max)}`;
}

// A PNG tile of the server's, scaled by a whole number (pixels stay square) to at most maxWidth; CSS shrinks it
// further where its column is narrower (max-width: 100%), so that no picture spills into the next column.
export function panel(enc, caption, maxWidth) {
  const fig = el("figure", "panel");
  const img = new Image();
  img.src = "data:image/png;base64," + enc.png;
  const [h, w] = enc.size;
  const s = Math.max(1, Math.min(8, Math.floor((maxWidth || 340) / w)));
  img.width = w * s;
  img.height = Math.max(h * s, 14);
  fig.style.width = img.width + "px";  // and max-width: 100% (style.css): never wider than its column
  fig.append(img, el("figcaption", null, `${caption} (${enc.shape.join("×")}; ${scale(enc)})`));
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
// A layer's row: its output (forward) and the gradients through it (backward).
function layerRow(fl, bl) {
  const box = el("div", "layer");
  box.dataset.type = fl.type;
  if (fl.branch) box.classList.add("branch-" + fl.branch);
  const h3 = el("h3", null, fl.label + " ");
  if (fl.branch) h3.prepend(el("span", "lane", fl.branch === "shortcut" ? "shortcut" : "branch f"));
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
  return box;
}

// A residual block's fork (x feeds both branches; their ∂x add) and join (s = f(x) + shortcut(x); ∂s goes to both).
function forkJoinRow(fl, bl) {
  const fork = fl.type === "fork";
  const box = el("div", "layer " + fl.type);
  box.dataset.type = fl.type;
  const h3 = el("h3", null, fl.label + " ");
  h3.append(el("span", "shape", "(" + fl.output.shape.join(", ") + ")"));
  box.append(h3);
  const cols = el("div", "cols");
  const [f, fp] = column(fork ? "forward: x, the input of both branches" : "forward: the two branches and their sum");
  if (fork) fp.append(panel(fl.output, "x", 480));
  else fp.append(panel(fl.parts[0], "f(x)", 240), panel(fl.parts[1], "shortcut(x)", 240), panel(fl.output, "s = f(x) + shortcut(x)", 240));
  const [b, bp] = column(fork ? "backward: ∂x through each branch, added" : "backward: ∂s, handed unchanged to both branches");
  bp.classList.add("grad");
  if (fork) bp.append(panel(bl.grad_parts[0], "∂x via branch f", 240), panel(bl.grad_parts[1], "∂x via the shortcut", 240),
                      panel(bl.grad_input, "∂x = their sum", 240));
  else bp.append(panel(bl.grad_output, "∂s = ∂f(x) = ∂shortcut(x)", 480));
  if (bl.equation) b.append(equation(bl.equation));
  cols.append(f, b);
  box.append(cols);
  return box;
}

// The frame of a residual block: its name, a diagram of its two lanes, and its rows inside.
function blockBox(name, steps) {
  const box = el("div", "block");
  box.dataset.block = name;
  box.append(el("h3", null, `${name}: residual block, y = relu(f(x) + shortcut(x))`));
  const lanes = el("div", "diagram");
  const names = (lane) => steps.filter((s) => s.branch === lane).map((s) => s.label.split(":")[0].slice(name.length + 1));
  const shortcut = names("shortcut");
  lanes.append(el("span", "node fork-node", "x ⟶ fork"),
    el("span", "lane-f", "branch f: " + names("residual").join(" → ")),
    el("span", "lane-s", "shortcut: " + (shortcut.length ? shortcut.join(" → ") : "identity, shortcut(x) = x")),
    el("span", "node join-node", "join (+) ⟶ s ⟶ " + steps.filter((s) => s.type !== "fork" && s.type !== "join" && !s.branch)
      .map((s) => s.label.split(":")[0].slice(name.length + 1)).join(" → ")));
  box.append(lanes);
  return box;
}

export function renderLayers(fwd, bwd) {
  const root = $("#layers");
  root.innerHTML = "";
  root.dataset.class = String(bwd.class);
  const head = el("div", "layer");
  const why = bwd.class === bwd.predicted ? "the predicted class" : "not the predicted class";
  head.append(el("h3", null, `Backward pass of the loss for class ${bwd.class} (${why}): L = ${fmt(bwd.loss)} `
    + `(p = ${(100 * bwd.probs[bwd.class]).toFixed(1)} %); the largest |∂L/∂x| is ${fmt(bwd.input_grad.max)}`));
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

  let block = null;
  fwd.layers.forEach((fl, k) => {
    const bl = bwd.layers[k];
    const r = fl.type === "fork" || fl.type === "join" ? forkJoinRow(fl, bl) : layerRow(fl, bl);
    if (!fl.block) { block = null; root.append(r); return; }
    if (!block || block.dataset.block !== fl.block) {
      block = blockBox(fl.block, fwd.layers.filter((s) => s.block === fl.block));
      root.append(block);
    }
    block.append(r);
  });
  root.dataset.state = "ready";
}
