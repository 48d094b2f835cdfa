// The traffic chart's scale and axis labels: pure functions, no DOM (tested under Node).
//
// With no traffic the chart still has an axis: a 0 baseline and a small fixed scale (1 kB/s or
// 10 frames/s), so an idle page shows a flat line at 0 instead of labels like "0 B, 0 B, 1 B".

/** Smallest top of the axis, per unit: an idle link is drawn against this. */
export const MIN_SCALE = { bytes: 1000, frames: 10 };

/** Grid lines above the baseline. */
export const TICKS = 4;

/** `value` with an SI prefix and at most one decimal: si(1500, "B/s") → "1.5 kB/s". */
export function si(value, suffix) {
  const units = ["", "k", "M", "G", "T"];
  let v = Number.isFinite(value) ? Math.max(0, value) : 0;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = v >= 100 || Number.isInteger(v) ? 0 : 1;
  return `${v.toFixed(digits)} ${units[i]}${suffix}`;
}

/** The next "nice" number ≥ v: 1, 2, 2.5 or 5 times a power of ten. */
export function niceCeil(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= v) return step * power;
  return 10 * power;
}

/**
 * The axis for samples whose largest value is `max` ("bytes" per second or "frames" per
 * second): {scale, ticks: [{value, label}]} from 0 up to scale, TICKS + 1 labels, all
 * distinct. Missing, negative or non-numeric maxima count as 0 (an idle chart).
 */
export function chartScale(max, unit = "bytes") {
  const floor = MIN_SCALE[unit] ?? MIN_SCALE.bytes;
  const top = Number.isFinite(max) && max > floor ? max : floor;
  const scale = niceCeil(top);
  const suffix = unit === "frames" ? "fr/s" : "B/s";
  const ticks = [];
  for (let g = 0; g <= TICKS; g++) {
    const value = (scale * g) / TICKS;
    ticks.push({ value, label: si(value, suffix) });
  }
  return { scale, ticks };
}
