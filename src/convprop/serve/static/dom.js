// Small helpers for the page's elements and numbers.

export const $ = (sel) => document.querySelector(sel);

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// A number in at most 3 significant digits, in exponent form when very small or large.
export function fmt(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(1) : v.toPrecision(3).replace(/\.?0+$/, "");
}

export function showError(err) {
  const p = $("#error");
  p.hidden = !err;
  p.textContent = err ? String(err.message || err) : "";
}
