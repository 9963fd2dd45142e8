// The prediction: what the model sees (28×28) and a bar per class.
import { $, el } from "./dom.js";

export function showDigit(digit) {
  const c = $("#digit").getContext("2d");
  const im = c.createImageData(28, 28);
  for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
    const v = digit[y][x], i = 4 * (28 * y + x);
    im.data[i] = im.data[i + 1] = im.data[i + 2] = v;
    im.data[i + 3] = 255;
  }
  c.putImageData(im, 0, 0);
}

// The classes' names (the model's training folders; MNIST's are the digits themselves).
let classNames = null;
export function setClassNames(names) { classNames = names; }
const label = (k) => (classNames && classNames[k] !== undefined ? classNames[k] : String(k));

// onPick(k) when the bar of class k is clicked.
export function showBars(probs, predicted, selected, onPick) {
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
    row.append(el("span", "k", label(k)), track, el("span", "p", (100 * p).toFixed(1) + "%"));
    row.title = "show the backward pass for class " + label(k);
    row.addEventListener("click", () => onPick(k));
    bars.append(row);
  });
}
