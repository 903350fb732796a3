// Line charts on <canvas>, sized for the device's pixel ratio.

export const HEALTH_COLORS = {
  healthy: "#16a34a",
  unhealthy: "#f59e0b",
  down: "#dc2626",
};

const PAD = { left: 52, right: 12, top: 10, bottom: 22 };
const HEALTH_STRIP = 5;

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((s) => s * magnitude >= value);
  return step * magnitude;
}

function cssColor(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  return { context, width, height };
}

function timeLabel(unixSeconds, span) {
  const date = new Date(unixSeconds * 1000);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return span > 86400 ? `${date.getDate()}/${date.getMonth() + 1} ${time}` : time;
}

// options: {since, until, series: [{color, points: [[t, v]]}], format(v), gap (s),
//           health: [[t, state]], minTop, empty (text when there is nothing to draw)}
export function drawLineChart(canvas, options) {
  const { context: c, width, height } = fitCanvas(canvas);
  const { since, until, series, format, gap } = options;
  const ink = cssColor("--muted", "#6b7280");
  const grid = cssColor("--grid", "#e5e7eb");
  const strip = options.health ? HEALTH_STRIP + 3 : 0;
  const plot = {
    left: PAD.left,
    top: PAD.top,
    width: width - PAD.left - PAD.right,
    height: height - PAD.top - PAD.bottom - strip,
  };
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  const top = niceCeiling(Math.max(options.minTop ?? 0, ...values));
  const x = (t) => plot.left + ((t - since) / (until - since)) * plot.width;
  const y = (v) => plot.top + plot.height - (v / top) * plot.height;

  c.font = "11px system-ui, sans-serif";
  c.lineWidth = 1;
  c.fillStyle = ink;
  c.textAlign = "right";
  c.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const value = (top * i) / 4;
    c.strokeStyle = grid;
    c.beginPath();
    c.moveTo(plot.left, Math.round(y(value)) + 0.5);
    c.lineTo(plot.left + plot.width, Math.round(y(value)) + 0.5);
    c.stroke();
    c.fillText(format(value), plot.left - 6, y(value));
  }
  c.textAlign = "center";
  c.textBaseline = "top";
  for (let i = 0; i <= 4; i += 1) {
    const t = since + ((until - since) * i) / 4;
    c.fillText(timeLabel(t, until - since), Math.min(Math.max(x(t), plot.left + 20), plot.left + plot.width - 20), height - PAD.bottom + 6);
  }

  if (options.health) {
    const stripTop = plot.top + plot.height + 3;
    const slot = Math.max(2, plot.width / 360);
    for (const [t, state] of options.health) {
      if (!HEALTH_COLORS[state]) continue;
      c.fillStyle = HEALTH_COLORS[state];
      c.fillRect(x(t) - slot / 2, stripTop, slot, HEALTH_STRIP);
    }
  }

  if (!values.length) {
    c.fillStyle = ink;
    c.textBaseline = "middle";
    c.fillText(options.empty || "no data in this range yet", plot.left + plot.width / 2, plot.top + plot.height / 2);
    return;
  }
  for (const line of series) {
    c.strokeStyle = line.color;
    c.lineWidth = 1.75;
    c.lineJoin = "round";
    c.beginPath();
    let previous = null;
    for (const [t, v] of line.points) {
      if (v === null) {
        previous = null;
        continue;
      }
      if (previous === null || t - previous > gap) c.moveTo(x(t), y(v));
      else c.lineTo(x(t), y(v));
      previous = t;
    }
    c.stroke();
    const lone = line.points.filter(([, v]) => v !== null);
    if (lone.length === 1) {
      c.fillStyle = line.color;
      c.beginPath();
      c.arc(x(lone[0][0]), y(lone[0][1]), 2.5, 0, 2 * Math.PI);
      c.fill();
    }
  }
}
