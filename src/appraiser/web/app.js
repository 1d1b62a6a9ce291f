// The appraisal page: builds the form from GET /v1/schema, prices the stone with
// POST /v1/appraisals?explain=true&comparables=5, and draws the answer (price, range, a waterfall
// of the dollar contributions as inline SVG, comparable stones). Plain ES2020, no dependencies.
"use strict";

(() => {
  const FEATURES = ["carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z"];
  const LABELS = {
    carat: "Carat",
    cut: "Cut",
    color: "Color",
    clarity: "Clarity",
    depth: "Total depth",
    table: "Table",
    x: "Length x",
    y: "Width y",
    z: "Depth z",
  };
  const UNIT_TEXT = { ct: "ct", "%": "%", mm: "mm" };
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = { base: "#7a8296", pos: "#2e7d32", neg: "#c62828", total: "#1f2a44" };

  const $ = (id) => document.getElementById(id);
  const form = $("appraisal-form");
  const submitButton = $("submit");

  let schema = null;
  let money = new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: "USD",
    minimumFractionDigits: 0,
    maximumFractionDigits: 0,
  });
  let busy = false;
  let lastAppraisal = null;
  let lastStone = null;
  let drawnWidth = 0;

  // --- helpers ------------------------------------------------------------------------------

  const { ApiError, request, el } = window.AppraiserWeb;

  function api(method, url, body) {
    return request(method, url, { body });
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const fmtMoney = (v) => money.format(v);
  const fmtSigned = (v) => {
    const rounded = Math.round(v);
    if (rounded === 0) return money.format(0);
    return (rounded > 0 ? "+" : "\u2212") + money.format(Math.abs(rounded));
  };
  const fmtNum = (v, digits = 2) =>
    typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: digits }) : String(v);

  function boundText(spec) {
    const low = spec.min_inclusive ? "\u2265" : ">";
    return `${low} ${fmtNum(spec.min)} and \u2264 ${fmtNum(spec.max)} ${UNIT_TEXT[spec.unit] || spec.unit}`;
  }

  // --- the form -----------------------------------------------------------------------------

  function buildForm() {
    const grades = $("grade-fields");
    const numeric = $("numeric-fields");
    grades.replaceChildren();
    numeric.replaceChildren();
    const descriptions = schema.descriptions || {};

    for (const [name, values] of Object.entries(schema.grades)) {
      const select = el("select", {
        id: `f-${name}`,
        name,
        "aria-describedby": `f-${name}-hint f-${name}-error`,
        required: true,
      });
      // the order given is worst first: the best grade is last, as the trade lists it
      for (const value of values) select.append(el("option", { value, text: value }));
      grades.append(
        el(
          "div",
          { className: "field" },
          el("label", { for: `f-${name}`, text: LABELS[name] || name }),
          select,
          el("span", { className: "hint", id: `f-${name}-hint`, text: `${values[0]} (worst) \u2192 ${values[values.length - 1]} (best)` }),
          el("span", { className: "field-error", id: `f-${name}-error` })
        )
      );
      if (descriptions[name]) select.title = descriptions[name];
    }

    for (const [name, spec] of Object.entries(schema.numeric)) {
      const input = el("input", {
        type: "number",
        id: `f-${name}`,
        name,
        step: "any",
        min: spec.min,
        max: spec.max,
        inputmode: "decimal",
        required: true,
        "aria-describedby": `f-${name}-hint f-${name}-error`,
      });
      const unit = UNIT_TEXT[spec.unit] || spec.unit;
      const label = el("label", { for: `f-${name}` }, `${LABELS[name] || name} `, el("span", { className: "unit", text: `(${unit})` }));
      const hint = [descriptions[name], boundText(spec)].filter(Boolean).join("; ");
      numeric.append(
        el(
          "div",
          { className: "field" },
          label,
          input,
          el("span", { className: "hint", id: `f-${name}-hint`, text: hint }),
          el("span", { className: "field-error", id: `f-${name}-error` })
        )
      );
    }

    $("depth-rule").textContent = `Rule: ${(schema.rules || []).join("; ")}.`;
    if (!(schema.rules || []).length) $("depth-rule").hidden = true;
    fillExample();
  }

  function fillExample() {
    for (const [name, value] of Object.entries(schema.example || {})) {
      const field = $(`f-${name}`);
      if (field) field.value = String(value);
    }
    clearFieldErrors();
  }

  function readStone() {
    const stone = {};
    for (const name of FEATURES) {
      const field = $(`f-${name}`);
      if (!field) continue;
      if (field.tagName === "SELECT") {
        stone[name] = field.value;
      } else {
        const text = field.value.trim();
        const number = field.valueAsNumber;
        stone[name] = text === "" || Number.isNaN(number) ? null : number;
      }
    }
    return stone;
  }

  function clearFieldErrors() {
    for (const name of FEATURES) {
      const field = $(`f-${name}`);
      if (field) field.removeAttribute("aria-invalid");
      const error = $(`f-${name}-error`);
      if (error) error.textContent = "";
    }
  }

  function fieldOf(entry) {
    const loc = Array.isArray(entry.loc) ? entry.loc.map(String) : [];
    for (let i = loc.length - 1; i >= 0; i -= 1) if (FEATURES.includes(loc[i])) return loc[i];
    // a rule across fields (the depth identity) comes without a field: its message starts with it
    const match = /^([a-z]+)\b/.exec(cleanMsg(entry.msg));
    return match && FEATURES.includes(match[1]) ? match[1] : null;
  }

  const cleanMsg = (msg) => String(msg || "").replace(/^Value error, /, "");

  function markFieldErrors(detail) {
    if (!Array.isArray(detail)) return null;
    const byField = new Map();
    for (const entry of detail) {
      if (!entry || typeof entry !== "object") continue;
      const name = fieldOf(entry);
      if (!name) continue;
      const list = byField.get(name) || [];
      list.push(cleanMsg(entry.msg));
      byField.set(name, list);
    }
    let first = null;
    for (const name of FEATURES) {
      if (!byField.has(name)) continue;
      const field = $(`f-${name}`);
      if (!field) continue;
      field.setAttribute("aria-invalid", "true");
      $(`f-${name}-error`).textContent = byField.get(name).join("; ");
      first = first || field;
    }
    return first;
  }

  // --- showing the answer -------------------------------------------------------------------

  function showError(message) {
    const box = $("error");
    box.replaceChildren(el("strong", { text: "The stone could not be priced" }), document.createTextNode(message));
    box.hidden = false;
  }

  function hideError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function showResult(answer, stone) {
    lastAppraisal = answer;
    $("placeholder").hidden = true;
    $("result").hidden = false;
    $("price").textContent = fmtMoney(answer.price);
    const share = Math.round((answer.coverage || 0.9) * 100);
    const range = $("range");
    range.replaceChildren(
      `${share}% range: `,
      el("strong", { text: fmtMoney(answer.price_low) }),
      " \u2013 ",
      el("strong", { text: fmtMoney(answer.price_high) })
    );
    $("model-version").textContent = `version ${answer.model_version}`;
    $("appraisal-id").textContent = answer.id;

    const warnings = answer.warnings || [];
    $("warning-list").replaceChildren(...warnings.map((w) => el("li", { text: w })));
    $("warnings").hidden = warnings.length === 0;

    lastStone = stone;
    drawWaterfall(answer, stone);
    fillComparables(answer.comparables || [], stone);

    $("expert-price").value = "";
    $("expert-price").removeAttribute("aria-invalid");
    $("expert-price-error").textContent = "";
    $("feedback-status").textContent = "";
  }

  function featureLabel(name, stone) {
    const value = stone[name];
    if (value === undefined || value === null) return LABELS[name] || name;
    const spec = schema.numeric[name];
    const unit = spec ? ` ${UNIT_TEXT[spec.unit] || spec.unit}` : "";
    return `${LABELS[name] || name} (${typeof value === "number" ? fmtNum(value) : value}${unit})`;
  }

  function niceStep(span, target) {
    const raw = span / Math.max(target, 1);
    const power = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function drawWaterfall(answer, stone) {
    const box = $("chart");
    box.replaceChildren();
    const contributions = answer.contributions;
    if (!contributions || typeof answer.baseline !== "number") {
      box.append(el("p", { className: "hint", text: "No explanation came with this price." }));
      return;
    }
    const rows = [{ kind: "base", name: "baseline", label: "Average stone", start: 0, end: answer.baseline, value: answer.baseline }];
    let running = answer.baseline;
    const parts = Object.entries(contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    for (const [name, dollars] of parts) {
      rows.push({ kind: dollars >= 0 ? "pos" : "neg", name, label: featureLabel(name, stone), start: running, end: running + dollars, value: dollars });
      running += dollars;
    }
    rows.push({ kind: "total", name: "price", label: "This stone", start: 0, end: answer.price, value: answer.price });

    // drawn at the container's size so the text stays 13 px; narrow screens put labels above bars
    const width = Math.max(300, Math.round(box.clientWidth || 760));
    const compact = width < 560;
    const labelWidth = compact ? 0 : Math.min(210, Math.round(width * 0.3));
    const valueWidth = compact ? 0 : 96;
    const rowHeight = compact ? 42 : 30;
    const barHeight = compact ? 14 : 18;
    const barOffset = compact ? 22 : (rowHeight - barHeight) / 2;
    const top = 8;
    const axisHeight = 26;
    const left = compact ? 6 : labelWidth;
    const right = width - (compact ? 6 : valueWidth);
    const height = top + rows.length * rowHeight + axisHeight;
    drawnWidth = width;

    const values = rows.flatMap((r) => [r.start, r.end]);
    let lo = Math.min(0, ...values);
    let hi = Math.max(0, ...values);
    if (hi - lo < 1) hi = lo + 1;
    const step = niceStep(hi - lo, compact ? 3 : 5);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const x = (v) => left + ((v - lo) / (hi - lo)) * (right - left);

    const titleId = "chart-svg-title";
    const descId = "chart-svg-desc";
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-labelledby": titleId,
      "aria-describedby": descId,
      preserveAspectRatio: "xMinYMin meet",
      class: "waterfall",
    });
    chart.append(svg("title", { id: titleId }, "How the price is built up, in dollars"));
    const description = rows
      .map((r) => (r.kind === "pos" || r.kind === "neg" ? `${r.label} ${fmtSigned(r.value)}` : `${r.label} ${fmtMoney(r.value)}`))
      .join("; ");
    chart.append(svg("desc", { id: descId }, description));

    // grid and axis
    const grid = svg("g", { class: "grid", "aria-hidden": "true" });
    const axisY = top + rows.length * rowHeight;
    const ticks = Math.round((hi - lo) / step);
    for (let t = 0; t <= ticks; t += 1) {
      const v = lo + t * step;
      const gx = x(v);
      grid.append(svg("line", { x1: gx, x2: gx, y1: top - 4, y2: axisY, stroke: v === 0 ? "#9aa2b3" : "#e6e9ef", "stroke-width": 1 }));
      const anchor = gx < 30 ? "start" : gx > width - 30 ? "end" : "middle";
      grid.append(svg("text", { x: gx, y: axisY + 16, "text-anchor": anchor, "font-size": 11, fill: "#6b7385" }, fmtMoney(v)));
    }
    chart.append(grid);

    rows.forEach((row, i) => {
      const y = top + i * rowHeight;
      const x0 = x(Math.min(row.start, row.end));
      const x1 = x(Math.max(row.start, row.end));
      const barWidth = Math.max(2, x1 - x0);
      const kindClass = row.kind === "pos" || row.kind === "neg" ? "contribution" : row.kind === "base" ? "baseline" : "total";
      const group = svg("g", { class: `bar ${kindClass} ${row.kind}`, "data-feature": row.name });
      const valueText = row.kind === "pos" || row.kind === "neg" ? fmtSigned(row.value) : fmtMoney(row.value);
      group.append(svg("title", {}, `${row.label}: ${valueText}`));
      const textY = compact ? y + 15 : y + rowHeight / 2 + 4;
      const weight = row.kind === "total" ? 700 : 400;
      group.append(
        svg(
          "text",
          { x: compact ? left : labelWidth - 10, y: textY, "text-anchor": compact ? "start" : "end", "font-size": 13, fill: "#1c2333", "font-weight": weight },
          row.label
        )
      );
      group.append(svg("rect", { x: x0, y: y + barOffset, width: barWidth, height: barHeight, rx: 3, fill: COLORS[row.kind] }));
      group.append(
        svg(
          "text",
          {
            x: compact ? right : width - 4,
            y: textY,
            "text-anchor": "end",
            "font-size": 13,
            "font-weight": row.kind === "total" ? 700 : 600,
            fill: row.kind === "pos" ? COLORS.pos : row.kind === "neg" ? COLORS.neg : "#1c2333",
          },
          valueText
        )
      );
      chart.append(group);
      // the connector from this bar's end to the next bar's start: the running total
      if (i < rows.length - 1) {
        const cx = x(row.end);
        chart.append(
          svg("line", {
            x1: cx,
            x2: cx,
            y1: y + barOffset + barHeight,
            y2: y + rowHeight + barOffset,
            stroke: "#9aa2b3",
            "stroke-dasharray": "2 2",
            "aria-hidden": "true",
          })
        );
      }
    });
    box.append(chart);
  }

  function fillComparables(comparables, stone) {
    const body = document.querySelector("#comparables tbody");
    body.replaceChildren();
    if (!comparables.length) {
      body.append(
        el("tr", {}, el("td", { colspan: 9, text: `No stone of the collection is ${stone.cut}, ${stone.color}, ${stone.clarity}.` }))
      );
      return;
    }
    for (const c of comparables) {
      const diff = c.carat_difference;
      const diffText = Math.abs(diff) < 0.005 ? "same" : `${diff > 0 ? "+" : "\u2212"}${fmtNum(Math.abs(diff))} ct`;
      body.append(
        el(
          "tr",
          {},
          el("td", { className: "num", text: fmtNum(c.carat) }),
          el("td", { text: c.cut }),
          el("td", { text: c.color }),
          el("td", { text: c.clarity }),
          el("td", { className: "num", text: `${fmtNum(c.depth, 1)}%` }),
          el("td", { className: "num", text: `${fmtNum(c.table, 1)}%` }),
          el("td", { className: "num", text: `${fmtNum(c.x)} × ${fmtNum(c.y)} × ${fmtNum(c.z)}` }),
          el("td", { className: "num", text: fmtMoney(c.price) }),
          el("td", { className: "num", text: diffText })
        )
      );
    }
  }

  // --- events -------------------------------------------------------------------------------

  async function onSubmit(event) {
    event.preventDefault();
    if (busy || !schema) return;
    busy = true;
    const stone = readStone();
    clearFieldErrors();
    hideError();
    submitButton.disabled = true;
    submitButton.textContent = "Appraising\u2026";
    $("result-card").setAttribute("aria-busy", "true");
    $("form-status").textContent = "Appraising\u2026";
    try {
      const answer = await api("POST", "/v1/appraisals?explain=true&comparables=5", stone);
      showResult(answer, stone);
      $("form-status").textContent = `Appraised at ${fmtMoney(answer.price)} (range ${fmtMoney(answer.price_low)} to ${fmtMoney(answer.price_high)}).`;
    } catch (error) {
      $("result").hidden = true;
      $("placeholder").hidden = false;
      lastAppraisal = null;
      const message = error instanceof ApiError ? error.message : String(error);
      showError(message);
      const first = error instanceof ApiError ? markFieldErrors(error.detail) : null;
      $("form-status").textContent = "Not priced: see the message.";
      if (first) first.focus();
    } finally {
      busy = false;
      submitButton.disabled = false;
      submitButton.textContent = "Appraise";
      $("result-card").removeAttribute("aria-busy");
    }
  }

  async function onFeedback(event) {
    event.preventDefault();
    if (!lastAppraisal) return;
    const input = $("expert-price");
    const status = $("feedback-status");
    const error = $("expert-price-error");
    input.removeAttribute("aria-invalid");
    error.textContent = "";
    const price = input.value.trim() === "" ? null : input.valueAsNumber;
    if (price === null || Number.isNaN(price)) {
      input.setAttribute("aria-invalid", "true");
      error.textContent = "Enter your price in dollars.";
      input.focus();
      return;
    }
    const button = $("feedback-submit");
    button.disabled = true;
    status.textContent = "Sending\u2026";
    try {
      const answer = await api("POST", `/v1/appraisals/${encodeURIComponent(lastAppraisal.id)}/feedback`, { price });
      status.textContent = `Thank you: ${fmtMoney(price)} ${answer && answer.message ? `\u2014 ${answer.message}` : "kept"}.`;
    } catch (e) {
      input.setAttribute("aria-invalid", "true");
      error.textContent = e instanceof ApiError ? e.message : String(e);
      status.textContent = "Not sent.";
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    form.addEventListener("submit", onSubmit);
    $("reset").addEventListener("click", () => {
      if (schema) fillExample();
      hideError();
    });
    $("feedback").addEventListener("submit", onFeedback);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        const box = $("chart");
        if (lastAppraisal && !$("result").hidden && Math.abs(box.clientWidth - drawnWidth) > 8) {
          drawWaterfall(lastAppraisal, lastStone);
        }
      }, 150);
    });
    form.addEventListener("input", (event) => {
      const target = event.target;
      if (target && target.getAttribute("aria-invalid") === "true") {
        target.removeAttribute("aria-invalid");
        const error = $(`${target.id}-error`);
        if (error) error.textContent = "";
      }
    });
    submitButton.disabled = true;
    try {
      schema = await api("GET", "/v1/schema");
    } catch (error) {
      const box = $("schema-error");
      box.textContent = `The form could not be loaded: ${error.message}`;
      box.hidden = false;
      return;
    }
    if (schema.currency) {
      try {
        money = new Intl.NumberFormat("en-US", {
          style: "currency",
          currency: schema.currency,
          minimumFractionDigits: 0,
          maximumFractionDigits: 0,
        });
      } catch (_) {
        /* keep USD */
      }
      $("currency").textContent = schema.currency === "USD" ? "US dollars" : schema.currency;
    }
    buildForm();
    submitButton.disabled = false;
    document.body.dataset.ready = "true";
  }

  start();
})();
