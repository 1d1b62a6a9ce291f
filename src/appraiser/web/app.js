// The appraisal page: builds the form from GET /v1/schema, prices the stone with
// POST /v1/appraisals?explain=true&comparables=5, and draws the answer (price, range, the deal
// verdict for an asking price, a waterfall of the dollars each reason adds as inline SVG, the
// price one grade better or worse, comparable stones). An expert sends their price with an expert
// key. A supplier's list (CSV) is priced with POST /v1/appraisals/list into a sortable table that
// downloads as CSV. Plain ES2020, no dependencies.
"use strict";

(() => {
  const FEATURES = ["carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z"];
  const FIELDS = [...FEATURES, "asking_price"]; // the form's fields: the stone and the deal check
  const GRADES = ["cut", "color", "clarity"];
  const EXPERT_KEY_STORAGE = "appraiser.expertKey";
  const VERDICTS = {
    "below market": { text: "Below market", className: "below" },
    fair: { text: "Fair", className: "fair" },
    "above market": { text: "Above market", className: "above" },
  };
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
    asking_price: "Asking price",
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
  const fmtMm = (v) =>
    typeof v === "number" ? v.toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 2 }) : String(v);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  // a probability in whole percent, never rounded to a certainty it is not
  const fmtChance = (p) => (p >= 0.995 ? ">99%" : p < 0.005 ? "<1%" : `${Math.round(p * 100)}%`);

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
    $("f-asking_price").value = "";
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
    // the deal check is optional: sent only when filled
    const asking = $("f-asking_price");
    if (asking.value.trim() !== "" && !Number.isNaN(asking.valueAsNumber)) stone.asking_price = asking.valueAsNumber;
    return stone;
  }

  function clearFieldErrors() {
    for (const name of FIELDS) {
      const field = $(`f-${name}`);
      if (field) field.removeAttribute("aria-invalid");
      const error = $(`f-${name}-error`);
      if (error) error.textContent = "";
    }
  }

  function fieldOf(entry) {
    const loc = Array.isArray(entry.loc) ? entry.loc.map(String) : [];
    for (let i = loc.length - 1; i >= 0; i -= 1) if (FIELDS.includes(loc[i])) return loc[i];
    // a rule across fields (the depth identity) comes without a field: its message starts with it
    const match = /^([a-z_]+)\b/.exec(cleanMsg(entry.msg));
    return match && FIELDS.includes(match[1]) ? match[1] : null;
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
    for (const name of FIELDS) {
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
    $("as-of").textContent = marketText(answer.market_level);
    $("model-version").textContent = `version ${answer.model_version}`;
    $("appraisal-id").textContent = answer.id;

    const warnings = answer.warnings || [];
    $("warning-list").replaceChildren(...warnings.map((w) => el("li", { text: w })));
    $("warnings").hidden = warnings.length === 0;

    showDeal(answer.deal);

    lastStone = stone;
    drawWaterfall(answer, stone);
    fillWhatIf(answer, stone);
    fillComparables(answer.comparables || [], stone);

    for (const id of ["expert-price", "expert-key"]) {
      $(id).removeAttribute("aria-invalid");
      $(`${id}-error`).textContent = "";
    }
    $("expert-price").value = "";
    $("feedback-status").textContent = "";
  }

  /** The deal verdict for the asking price, when one was sent: a coloured badge and the sentence. */
  function showDeal(deal) {
    const box = $("deal");
    if (!deal) {
      box.hidden = true;
      return;
    }
    const verdict = VERDICTS[deal.verdict] || { text: String(deal.verdict), className: "fair" };
    $("deal-asking").textContent = fmtMoney(deal.asking_price);
    const badge = $("deal-verdict");
    badge.textContent = verdict.text;
    badge.className = `verdict-badge ${verdict.className}`;
    $("deal-message").textContent = deal.message || "";
    box.className = `deal ${verdict.className}`;
    box.hidden = false;
  }

  const MARKET = "market"; // the reason the market level adds since the collection

  /** "6 Dec 2026" for an ISO day, whatever the browser's time zone. */
  function fmtDay(iso) {
    const date = new Date(`${iso}T00:00:00Z`);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleDateString("en-GB", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
  }

  const fmtLevel = (v) => (isNum(v) ? v.toFixed(2) : "\u2014");

  /** Which day's prices these are and the market level they stand on, in one line. */
  function marketText(level) {
    if (!level) return "";
    const said = `Prices as of ${fmtDay(level.as_of)}, market level ${fmtLevel(level.level)}`;
    if (!level.month) return `${said} (base)`;
    const month = new Date(`${level.month}T00:00:00Z`).toLocaleDateString("en-GB", { month: "short", year: "numeric", timeZone: "UTC" });
    return `${said} (90% interval ${fmtLevel(level.low)} to ${fmtLevel(level.high)}, the estimate of ${month})`;
  }

  /** A reason's label in a jeweller's words, with this stone's values for it. */
  function reasonLabel(name, stone, answer) {
    const has = (key) => stone && stone[key] !== undefined && stone[key] !== null;
    switch (name) {
      case MARKET: {
        const level = answer && answer.market_level;
        return level ? `Market since the collection (level ${fmtLevel(level.level)})` : "Market since the collection";
      }
      case "size": {
        if (!has("carat")) return "Size";
        const mm = ["x", "y", "z"].every(has) ? `, ${fmtMm(stone.x)} \u00d7 ${fmtMm(stone.y)} \u00d7 ${fmtMm(stone.z)} mm` : "";
        return `Size (${fmtNum(stone.carat)} ct${mm})`;
      }
      case "cut":
      case "color":
      case "clarity":
        return has(name) ? `${LABELS[name]} (${stone[name]})` : LABELS[name];
      case "proportions": {
        const parts = [];
        if (has("depth")) parts.push(`depth ${fmtNum(stone.depth, 1)}%`);
        if (has("table")) parts.push(`table ${fmtNum(stone.table, 1)}%`);
        return parts.length ? `Proportions (${parts.join(", ")})` : "Proportions";
      }
      default: {
        // a reason this page does not know yet: its name, capitalised
        const text = String(name).replace(/_/g, " ");
        return text.charAt(0).toUpperCase() + text.slice(1);
      }
    }
  }

  let measureContext = null;
  /** The width of `text` drawn at `size` px in the page's font (a canvas measures it). */
  function textWidth(text, size) {
    try {
      measureContext = measureContext || document.createElement("canvas").getContext("2d");
      if (measureContext) {
        measureContext.font = `${size}px ${getComputedStyle(document.body).fontFamily}`;
        return measureContext.measureText(text).width;
      }
    } catch (_) {
      /* fall through to the estimate */
    }
    return text.length * size * 0.56;
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
    // the stone's reasons, largest first, then the market since the collection: the last step
    // from the price on the base level to the price of the day
    const parts = Object.entries(contributions).sort((a, b) => (a[0] === MARKET) - (b[0] === MARKET) || Math.abs(b[1]) - Math.abs(a[1]));
    for (const [name, dollars] of parts) {
      rows.push({ kind: dollars >= 0 ? "pos" : "neg", name, label: reasonLabel(name, stone, answer), start: running, end: running + dollars, value: dollars });
      running += dollars;
    }
    rows.push({ kind: "total", name: "price", label: "This stone", start: 0, end: answer.price, value: answer.price });

    // drawn at the container's size so the text stays 13 px; labels sit left of the bars when
    // they fit in 45% of the width, else (narrow screens, long labels) above the bars
    const width = Math.max(300, Math.round(box.clientWidth || 760));
    const longest = Math.max(...rows.map((r) => textWidth(r.label, 13) * (r.kind === "total" ? 1.08 : 1)));
    const compact = width < 560 || longest + 16 > width * 0.45;
    const labelWidth = compact ? 0 : Math.max(150, Math.ceil(longest + 16));
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
      // above the bar (compact), the label shares its line with the dollars: smaller if needed
      let labelSize = 13;
      if (compact) {
        const room = right - left - textWidth(valueText, 13) * 1.1 - 12;
        const needed = textWidth(row.label, 13) * (row.kind === "total" ? 1.08 : 1);
        if (needed > room) labelSize = Math.max(9, Math.floor((13 * room * 10) / needed) / 10);
      }
      group.append(
        svg(
          "text",
          { x: compact ? left : labelWidth - 10, y: textY, "text-anchor": compact ? "start" : "end", "font-size": labelSize, fill: "#1c2333", "font-weight": weight },
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

  /** Per grade, the price of the same stone one grade better and one worse ("\u2014" at the end
   * of a scale), with the difference from this stone's price. */
  function fillWhatIf(answer, stone) {
    const list = $("what-if");
    list.replaceChildren();
    const whatIf = answer.what_if;
    if (!whatIf) {
      list.append(el("li", { className: "hint", text: "No grade comparison came with this price." }));
      return;
    }
    const side = (words, other, end) => {
      // the API leaves out (or nulls) the side past the end of the scale
      if (!other || !isNum(other.price)) {
        return el(
          "span",
          { className: "other end" },
          `${words}: `,
          el("span", { "aria-hidden": "true", text: "\u2014" }),
          el("span", { className: "visually-hidden", text: `none, the ${end} grade already` })
        );
      }
      const delta = other.price - answer.price;
      return el(
        "span",
        { className: "other" },
        `${words} (${other.grade}): `,
        el("strong", { text: fmtMoney(other.price) }),
        " ",
        el("span", { className: delta >= 0 ? "delta pos" : "delta neg", text: `(${fmtSigned(delta)})` })
      );
    };
    for (const grade of GRADES) {
      const entry = whatIf[grade];
      if (!entry) continue;
      list.append(
        el(
          "li",
          { "data-grade": grade },
          el("span", { className: "grade-name", text: reasonLabel(grade, stone) }),
          el("span", { className: "others" }, side("One grade better", entry.better, "best"), el("span", { className: "sep", "aria-hidden": "true", text: " \u00b7 " }), side("one worse", entry.worse, "worst"))
        )
      );
    }
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

  // --- a supplier's list --------------------------------------------------------------------

  // the table's columns: `key` sorts (a function of the row), `cell` draws; `num` aligns right
  const gradeRank = (name) => (row) => {
    const order = (schema && schema.grades && schema.grades[name]) || [];
    const at = order.indexOf(row[name]);
    return at < 0 ? null : at; // worst first: ascending puts the best grade last, as the form
  };
  const numberOf = (value) => {
    if (isNum(value)) return value;
    if (typeof value !== "string" || value.trim() === "") return null;
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  };
  const asSent = (value) => (value === null || value === undefined ? "" : String(value));
  const VERDICT_RANK = { "below market": 0, fair: 1, "above market": 2 };

  const LIST_COLUMNS = [
    { id: "row", title: "#", num: true, key: (r) => r._row, cell: (r) => String(r._row) },
    { id: "carat", title: "Carat", num: true, key: (r) => numberOf(r.carat), cell: (r) => asSent(r.carat) },
    { id: "cut", title: "Cut", key: gradeRank("cut"), cell: (r) => asSent(r.cut) },
    { id: "color", title: "Color", key: gradeRank("color"), cell: (r) => asSent(r.color) },
    { id: "clarity", title: "Clarity", key: gradeRank("clarity"), cell: (r) => asSent(r.clarity) },
    { id: "depth", title: "Depth %", num: true, key: (r) => numberOf(r.depth), cell: (r) => asSent(r.depth) },
    { id: "table", title: "Table %", num: true, key: (r) => numberOf(r.table), cell: (r) => asSent(r.table) },
    {
      id: "size",
      title: "Size (mm)",
      num: true,
      key: (r) => numberOf(r.x),
      cell: (r) => [r.x, r.y, r.z].map(asSent).join(" \u00d7 "),
    },
    { id: "price", title: "Price", num: true, key: (r) => numberOf(r.price), cell: (r) => (isNum(r.price) ? fmtMoney(r.price) : "\u2014") },
    {
      id: "range",
      title: "Range",
      num: true,
      key: (r) => numberOf(r.price_low),
      cell: (r) => (isNum(r.price_low) && isNum(r.price_high) ? `${fmtMoney(r.price_low)} \u2013 ${fmtMoney(r.price_high)}` : "\u2014"),
    },
    {
      id: "asking_price",
      title: "Asking",
      num: true,
      key: (r) => numberOf(r.asking_price),
      cell: (r) => {
        const n = numberOf(r.asking_price);
        return n === null ? asSent(r.asking_price) : fmtMoney(n);
      },
    },
    {
      id: "bargain_probability",
      title: "Bargain chance",
      num: true,
      key: (r) => numberOf(r.bargain_probability),
      cell: (r) => (isNum(r.bargain_probability) ? fmtChance(r.bargain_probability) : "\u2014"),
    },
    {
      id: "verdict",
      title: "Verdict",
      key: (r) => (r.verdict in VERDICT_RANK ? VERDICT_RANK[r.verdict] : null),
      cell: (r) => {
        const verdict = VERDICTS[r.verdict];
        return verdict ? el("span", { className: `verdict-badge small ${verdict.className}`, text: verdict.text }) : "";
      },
    },
    {
      id: "notes",
      title: "Warnings / refused because",
      key: (r) => (r.error ? `0 ${r.error}` : (r.warnings || []).length ? `1 ${r.warnings.join("; ")}` : null),
      cell: (r) => {
        if (r.error) return el("span", { className: "refusal" }, el("strong", { text: "Refused: " }), r.error);
        const warnings = r.warnings || [];
        if (!warnings.length) return "";
        return el("ul", { className: "cell-list" }, ...warnings.map((w) => el("li", { text: w })));
      },
    },
  ];

  let listRows = []; // the server's rows, each with _row (its line in the list, from 1)
  let listName = "list";
  let listFile = null; // a file dropped on the zone (a chosen one is read from the input)
  let listSort = { id: "row", dir: "ascending" };

  function listFileError(message) {
    const input = $("list-file");
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    $("list-file-error").textContent = message || "";
  }

  function compareRows(column, dir) {
    const sign = dir === "ascending" ? 1 : -1;
    return (a, b) => {
      const ka = column.key(a);
      const kb = column.key(b);
      // rows without the value (refused, no asking price) stay last either way
      if (ka === null || ka === undefined || kb === null || kb === undefined) {
        if ((ka === null || ka === undefined) && (kb === null || kb === undefined)) return a._row - b._row;
        return ka === null || ka === undefined ? 1 : -1;
      }
      const order = typeof ka === "number" && typeof kb === "number" ? ka - kb : String(ka).localeCompare(String(kb));
      return order !== 0 ? sign * order : a._row - b._row;
    };
  }

  function drawListHead() {
    const head = document.querySelector("#list-table thead tr");
    head.replaceChildren(
      ...LIST_COLUMNS.map((column) => {
        const sorted = listSort.id === column.id;
        const th = el("th", {
          scope: "col",
          className: column.num ? "num" : null,
          "data-column": column.id,
          "aria-sort": sorted ? listSort.dir : null,
        });
        const arrow = el("span", { className: "sort-arrow", "aria-hidden": "true", text: sorted ? (listSort.dir === "ascending" ? "\u25b2" : "\u25bc") : "\u21c5" });
        const button = el("button", { type: "button", className: "sort" }, column.title, arrow);
        button.addEventListener("click", () => {
          const dir = listSort.id === column.id && listSort.dir === "ascending" ? "descending" : "ascending";
          listSort = { id: column.id, dir };
          drawListHead();
          drawListBody();
          $("list-status").textContent = `Sorted by ${column.title === "#" ? "row" : column.title.toLowerCase()}, ${dir}.`;
          const again = document.querySelector(`#list-table th[data-column="${column.id}"] button`);
          if (again) again.focus();
        });
        th.append(button);
        return th;
      })
    );
  }

  function drawListBody() {
    const body = document.querySelector("#list-table tbody");
    const column = LIST_COLUMNS.find((c) => c.id === listSort.id) || LIST_COLUMNS[0];
    const rows = [...listRows].sort(compareRows(column, listSort.dir));
    const fragment = document.createDocumentFragment();
    for (const row of rows) {
      const kind = row.error ? "refused" : row.verdict === "below market" ? "bargain" : row.verdict === "above market" ? "dear" : "priced";
      const tr = el("tr", { className: kind, "data-row": row._row });
      for (const c of LIST_COLUMNS) {
        const content = c.cell(row);
        const td = el("td", { className: [c.num ? "num" : "", `col-${c.id}`].filter(Boolean).join(" ") });
        td.append(content);
        tr.append(td);
      }
      fragment.append(tr);
    }
    body.replaceChildren(fragment);
  }

  function showList(answer) {
    listRows = (answer.rows || []).map((row, i) => ({ ...row, _row: i + 1 }));
    listSort = { id: "row", dir: "ascending" };
    const bargains = listRows.filter((r) => r.verdict === "below market").length;
    const asked = listRows.some((r) => "bargain_probability" in r || "verdict" in r);
    const parts = [`${fmtNum(answer.priced, 0)} priced, ${fmtNum(answer.refused, 0)} refused`];
    if (asked) parts.push(`${fmtNum(bargains, 0)} below market`);
    $("list-summary").replaceChildren(
      el("strong", { text: parts.join(", ") }),
      ` \u2014 model version ${answer.model_version}. ${marketText(answer.market_level)}. Nothing was stored.`
    );
    drawListHead();
    drawListBody();
    $("list-result").hidden = false;
  }

  /** A CSV cell: quoted when needed; text a spreadsheet would run as a formula is defused. */
  function csvCell(value) {
    if (value === null || value === undefined) return "";
    let text = Array.isArray(value) ? value.join("; ") : String(value);
    if (typeof value === "string" && /^[=+\-@\t\r]/.test(text) && !Number.isFinite(Number(text))) text = `'${text}`;
    return /[",\r\n]/.test(text) || /^\s|\s$/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  /** The list as priced, every column the server answered, in the list's own order. */
  function listCsv() {
    const columns = [];
    for (const row of listRows) for (const key of Object.keys(row)) if (key !== "_row" && !columns.includes(key)) columns.push(key);
    const lines = [columns.map(csvCell).join(",")];
    for (const row of listRows) lines.push(columns.map((c) => csvCell(row[c])).join(","));
    return `${lines.join("\r\n")}\r\n`;
  }

  function downloadList() {
    if (!listRows.length) return;
    const blob = new Blob([listCsv()], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: `${listName}-priced.csv`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    $("list-status").textContent = `Downloaded ${listName}-priced.csv (${fmtNum(listRows.length, 0)} rows).`;
  }

  let listBusy = false;

  async function onList(event) {
    event.preventDefault();
    if (listBusy) return;
    const input = $("list-file");
    const file = listFile || (input.files && input.files[0]);
    listFileError("");
    $("list-error").hidden = true;
    if (!file) {
      listFileError("Choose the supplier's CSV file first.");
      input.focus();
      return;
    }
    listBusy = true;
    const button = $("list-submit");
    button.disabled = true;
    button.textContent = "Pricing\u2026";
    $("list-card").setAttribute("aria-busy", "true");
    $("list-status").textContent = `Pricing ${file.name}\u2026`;
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const answer = await request("POST", "/v1/appraisals/list", { form });
      listName = file.name.replace(/\.csv$/i, "").replace(/[^\w.-]+/g, "_") || "list";
      showList(answer);
      $("list-status").textContent = `${file.name}: ${answer.priced} priced, ${answer.refused} refused.`;
    } catch (error) {
      const message = error instanceof ApiError ? error.message : String(error);
      const box = $("list-error");
      box.replaceChildren(el("strong", { text: "The list could not be priced" }), document.createTextNode(message));
      box.hidden = false;
      if (error instanceof ApiError && [413, 415, 422].includes(error.status)) listFileError("This file was refused: see the message above.");
      $("list-status").textContent = "Not priced: see the message.";
    } finally {
      listBusy = false;
      button.disabled = false;
      button.textContent = "Price the list";
      $("list-card").removeAttribute("aria-busy");
    }
  }

  function setUpList() {
    const input = $("list-file");
    const zone = $("list-drop");
    $("list-form").addEventListener("submit", onList);
    $("list-download").addEventListener("click", downloadList);
    input.addEventListener("change", () => {
      listFile = null;
      listFileError("");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) return;
      listFile = files[0];
      try {
        input.files = files; // shows the name in the input where the browser allows it
      } catch (_) {
        input.value = "";
      }
      listFileError("");
      $("list-status").textContent = `${listFile.name} chosen: press Price the list.`;
    });
  }

  // --- events -------------------------------------------------------------------------------

  async function onSubmit(event) {
    event.preventDefault();
    if (busy || !schema) return;
    busy = true;
    const stone = readStone();
    clearFieldErrors();
    hideError();
    const asking = $("f-asking_price");
    if (asking.validity.badInput) {
      // not a number (the browser keeps no value): said here, since nothing would reach the server
      asking.setAttribute("aria-invalid", "true");
      $("f-asking_price-error").textContent = "Enter the asking price in dollars, or leave it empty.";
      $("form-status").textContent = "Not priced: see the message.";
      asking.focus();
      busy = false;
      return;
    }
    submitButton.disabled = true;
    submitButton.textContent = "Appraising\u2026";
    $("result-card").setAttribute("aria-busy", "true");
    $("form-status").textContent = "Appraising\u2026";
    try {
      const answer = await api("POST", "/v1/appraisals?explain=true&comparables=5", stone);
      showResult(answer, stone);
      const verdict = answer.deal ? ` Asking price: ${(VERDICTS[answer.deal.verdict] || { text: answer.deal.verdict }).text}.` : "";
      $("form-status").textContent = `Appraised at ${fmtMoney(answer.price)} (range ${fmtMoney(answer.price_low)} to ${fmtMoney(answer.price_high)}).${verdict}`;
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

  function storedExpertKey() {
    try {
      return sessionStorage.getItem(EXPERT_KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function saveExpertKey(key) {
    try {
      if (key) sessionStorage.setItem(EXPERT_KEY_STORAGE, key);
      else sessionStorage.removeItem(EXPERT_KEY_STORAGE);
    } catch (_) {
      /* storage disabled: the key lives in the field only */
    }
  }

  async function onFeedback(event) {
    event.preventDefault();
    if (!lastAppraisal) return;
    const input = $("expert-price");
    const keyField = $("expert-key");
    const status = $("feedback-status");
    const error = $("expert-price-error");
    const keyError = $("expert-key-error");
    input.removeAttribute("aria-invalid");
    keyField.removeAttribute("aria-invalid");
    error.textContent = "";
    keyError.textContent = "";
    const price = input.value.trim() === "" ? null : input.valueAsNumber;
    if (price === null || Number.isNaN(price)) {
      input.setAttribute("aria-invalid", "true");
      error.textContent = "Enter your price in dollars.";
      input.focus();
      return;
    }
    // sent as typed, even empty: the server's 401 then says what is missing
    const key = keyField.value.trim();
    if (key) saveExpertKey(key);
    const button = $("feedback-submit");
    button.disabled = true;
    status.textContent = "Sending\u2026";
    try {
      await request("POST", `/v1/appraisals/${encodeURIComponent(lastAppraisal.id)}/feedback`, { body: { price }, key: key || undefined });
      status.textContent = "Sent for review: an admin approves it before it teaches the model.";
    } catch (e) {
      const message = e instanceof ApiError ? e.message : String(e);
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        // the key is missing, wrong, or not an expert's: said beside the key
        keyField.setAttribute("aria-invalid", "true");
        keyError.textContent = message;
        keyField.focus();
      } else {
        input.setAttribute("aria-invalid", "true");
        error.textContent = message;
      }
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
    $("expert-key").value = storedExpertKey();
    for (const id of ["expert-price", "expert-key"]) {
      $(id).addEventListener("input", () => {
        $(id).removeAttribute("aria-invalid");
        $(`${id}-error`).textContent = "";
      });
    }
    setUpList();
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
    if (schema.max_batch) $("list-max").textContent = fmtNum(schema.max_batch, 0);
    buildForm();
    submitButton.disabled = false;
    document.body.dataset.ready = "true";
  }

  start();
})();
