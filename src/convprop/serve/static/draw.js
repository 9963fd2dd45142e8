// The drawing pad: white ink on black, drawn with the mouse, a finger or a pen, or an image dropped on it
// or opened.  onChange() while the drawing changes, onDone() when a stroke ends or an image is shown.
import { $ } from "./dom.js";

export function createPad(pad, { onChange, onDone }) {
  const ctx = pad.getContext("2d");
  const hint = $("#drop-hint");
  let dropped = null;  // a dropped image's data URL, sent as is until the user draws or clears
  let drawn = false;   // anything on the pad
  let last = null;     // the last point of the stroke being drawn

  function clear() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    drawn = false;
    dropped = null;
    hint.hidden = false;
  }

  function point(e) {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  }

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
    if (dropped) clear();
    pad.setPointerCapture(e.pointerId);
    last = point(e);
    stroke(last, last);
    drawn = true;
    hint.hidden = true;
    onChange();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!last) return;
    e.preventDefault();
    const p = point(e);
    stroke(last, p);
    last = p;
    onChange();
  });
  function endStroke() {
    if (!last) return;
    last = null;
    onDone();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  function useImage(file) {
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      const img = new Image();
      img.onload = () => {
        clear();
        const s = Math.min(pad.width / img.width, pad.height / img.height);
        ctx.drawImage(img, (pad.width - img.width * s) / 2, (pad.height - img.height * s) / 2,
                      img.width * s, img.height * s);
        dropped = reader.result;
        hint.hidden = true;
        onChange();
        onDone();
      };
      img.onerror = () => {  // the server says why (it decodes what the browser cannot show, or refuses it)
        dropped = reader.result;
        onChange();
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

  // The drawing is sent at half size (140×140): the server scales the ink into 20×20 anyway.
  const half = document.createElement("canvas");
  half.width = pad.width / 2;
  half.height = pad.height / 2;
  function input() {
    if (dropped) return { image: dropped };
    const h = half.getContext("2d");
    h.imageSmoothingQuality = "high";
    h.drawImage(pad, 0, 0, half.width, half.height);
    return { image: half.toDataURL("image/png") };
  }

  return { clear, useImage, input, empty: () => !drawn && !dropped };
}
