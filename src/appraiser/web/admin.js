// The admin page: the API key (session storage only), CSV upload with its ingestion report, the
// model versions with their metrics and a Promote button, and a background retrain with its
// status polled every 2 s. Plain ES2020, no dependencies.
"use strict";

(() => {
  const KEY_STORAGE = "appraiser.apiKey";
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);

  // --- helpers ------------------------------------------------------------------------------

  const { ApiError, request, el } = window.AppraiserWeb;

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function saveKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* storage disabled: the key lives in the field only */
    }
  }

  /** The key typed in the field (saved for this tab), or null after asking for one. */
  function currentKey() {
    const field = $("api-key");
    const key = field.value.trim();
    if (key) {
      if (key !== storedKey()) saveKey(key);
      return key;
    }
    field.setAttribute("aria-invalid", "true");
    $("key-status").textContent = "Enter the admin API key first.";
    field.focus();
    return null;
  }

  /** request(), with the two admin refusals said in the admin's terms. */
  async function api(method, url, options = {}) {
    try {
      return await request(method, url, options);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        error.message = `Wrong or missing API key: ${error.message}`;
      } else if (error instanceof ApiError && error.status === 403) {
        error.message = `Admin is switched off on this server: ${error.message}`;
      }
      throw error;
    }
  }

  function showAlert(id, message) {
    const box = $(id);
    box.textContent = message;
    box.hidden = false;
  }

  function hideAlert(id) {
    $(id).hidden = true;
    $(id).textContent = "";
  }

  function onKeyError(error) {
    if (error instanceof ApiError && error.status === 401) $("api-key").setAttribute("aria-invalid", "true");
  }

  const count = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "\u2014");
  const pct = (v) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(1) : "\u2014");
  const cell = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

  function fmtDate(value) {
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value || "");
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  // --- the key ------------------------------------------------------------------------------

  function setUpKey() {
    const field = $("api-key");
    field.value = storedKey();
    if (field.value) $("key-status").textContent = "Using the key saved in this tab.";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = field.value.trim();
      field.removeAttribute("aria-invalid");
      if (!key) {
        field.setAttribute("aria-invalid", "true");
        $("key-status").textContent = "Enter the admin API key.";
        field.focus();
        return;
      }
      saveKey(key);
      $("key-status").textContent = "Key kept for this browser tab.";
    });
    $("key-forget").addEventListener("click", () => {
      saveKey("");
      field.value = "";
      field.removeAttribute("aria-invalid");
      $("key-status").textContent = "Key forgotten.";
    });
    field.addEventListener("input", () => field.removeAttribute("aria-invalid"));
  }

  // --- upload -------------------------------------------------------------------------------

  function showReport(report) {
    $("report").hidden = false;
    $("report-message").textContent = report.already_ingested
      ? `This file was already ingested (batch ${report.batch_id}): nothing added.`
      : `Batch ${report.batch_id}: ${count(report.rows_accepted)} of ${count(report.rows_read)} rows accepted, ${count(report.rows_rejected)} rejected.`;
    $("rows-read").textContent = count(report.rows_read);
    $("rows-accepted").textContent = count(report.rows_accepted);
    $("rows-rejected").textContent = count(report.rows_rejected);
    $("batch-id").textContent = report.batch_id === null || report.batch_id === undefined ? "\u2014" : String(report.batch_id);

    const reasons = Object.entries(report.rejected_by_reason || {}).sort((a, b) => b[1] - a[1]);
    $("reasons-block").hidden = reasons.length === 0;
    document.querySelector("#reasons tbody").replaceChildren(
      ...reasons.map(([reason, rows]) => el("tr", {}, el("td", { text: reason }), el("td", { className: "num", text: count(rows) })))
    );

    const rows = report.rejected_rows || [];
    $("rejected-block").hidden = rows.length === 0;
    const head = document.querySelector("#rejected thead tr");
    const body = document.querySelector("#rejected tbody");
    head.replaceChildren();
    body.replaceChildren();
    if (!rows.length) return;
    const first = ["line", "reasons"];
    const rest = [];
    for (const row of rows) for (const key of Object.keys(row)) if (!first.includes(key) && key !== "batch_id" && !rest.includes(key)) rest.push(key);
    const columns = [...first, ...rest];
    head.append(...columns.map((c) => el("th", { scope: "col", className: c === "line" ? "num" : null, text: c === "line" ? "Line" : c === "reasons" ? "Reasons" : c })));
    for (const row of rows) {
      body.append(el("tr", {}, ...columns.map((c) => el("td", { className: c === "line" ? "num" : null, text: cell(row[c]) }))));
    }
    const shown = rows.length;
    $("rejected-caption").textContent =
      report.rows_rejected > shown
        ? `The first ${count(shown)} of ${count(report.rows_rejected)} rejected rows (line numbers count the header as line 1).`
        : "Every rejected row, with the values as sent (line numbers count the header as line 1).";
  }

  function setUpUpload() {
    const form = $("upload-form");
    const fileField = $("csv-file");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      hideAlert("upload-error");
      fileField.removeAttribute("aria-invalid");
      $("csv-file-error").textContent = "";
      const file = fileField.files && fileField.files[0];
      if (!file) {
        fileField.setAttribute("aria-invalid", "true");
        $("csv-file-error").textContent = "Choose a CSV file.";
        fileField.focus();
        return;
      }
      const key = currentKey();
      if (!key) return;
      const data = new FormData();
      data.append("file", file, file.name);
      const source = $("csv-source").value.trim();
      if (source) data.append("source", source);
      const button = $("upload-submit");
      button.disabled = true;
      $("upload-status").textContent = `Uploading ${file.name}\u2026`;
      try {
        const report = await api("POST", "/v1/diamonds", { form: data, key });
        showReport(report);
        $("upload-status").textContent = `${file.name}: ${count(report.rows_accepted)} accepted, ${count(report.rows_rejected)} rejected.`;
      } catch (error) {
        onKeyError(error);
        $("report").hidden = true;
        showAlert("upload-error", error.message);
        $("upload-status").textContent = "Upload failed.";
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- models -------------------------------------------------------------------------------

  async function loadModels(note) {
    hideAlert("models-error");
    $("models-status").textContent = "Loading models\u2026";
    let answer;
    try {
      answer = await api("GET", "/v1/models");
    } catch (error) {
      showAlert("models-error", error.message);
      $("models-status").textContent = "";
      return;
    }
    const body = document.querySelector("#models tbody");
    body.replaceChildren();
    const models = answer.models || [];
    if (!models.length) {
      body.append(el("tr", {}, el("td", { colspan: 8, text: "No model yet: upload stones, then retrain (or run `appraiser train`)." })));
    }
    for (const m of models) {
      const metrics = m.metrics || {};
      const version = el("th", { scope: "row" }, `v${m.version} `);
      if (m.champion) version.append(el("span", { className: "badge", text: "Champion" }));
      let action;
      if (m.champion) {
        action = el("td", {}, el("span", { className: "hint", text: "prices now" }));
      } else {
        const button = el("button", {
          type: "button",
          className: "secondary small promote",
          "data-version": m.version,
          "aria-label": `Promote version ${m.version} to champion`,
          text: "Promote",
        });
        button.addEventListener("click", () => promote(m.version, button));
        action = el("td", {}, button);
      }
      body.append(
        el(
          "tr",
          { className: m.champion ? "champion" : null, "data-version": m.version, "aria-current": m.champion ? "true" : null },
          version,
          el("td", { text: m.model }),
          el("td", { text: fmtDate(m.created) }),
          el("td", { className: "num", text: pct(metrics.mape) }),
          el("td", { className: "num", text: pct(metrics.within_10) }),
          el("td", { className: "num", text: pct(metrics.coverage) }),
          el("td", { text: m.description || "" }),
          action
        )
      );
    }
    const champion = answer.champion ? `version ${answer.champion} is the champion` : "no champion yet";
    $("models-status").textContent = note || `${models.length} model version${models.length === 1 ? "" : "s"}; ${champion}.`;
  }

  async function promote(version, button) {
    const key = currentKey();
    if (!key) return;
    hideAlert("models-error");
    button.disabled = true;
    $("models-status").textContent = `Promoting version ${version}\u2026`;
    try {
      const answer = await api("POST", `/v1/models/${encodeURIComponent(version)}/promote`, { key });
      await loadModels(answer.message ? `${answer.message}.` : `Version ${version} is now the champion.`);
    } catch (error) {
      onKeyError(error);
      showAlert("models-error", error.message);
      $("models-status").textContent = "";
      button.disabled = false;
    }
  }

  // --- retrain ------------------------------------------------------------------------------

  let pollTimer = null;

  function describeJob(job) {
    const lines = [`status: ${job.status}`];
    if (job.started_at) lines.push(`started: ${fmtDate(job.started_at)}`);
    if (job.finished_at) lines.push(`finished: ${fmtDate(job.finished_at)}`);
    if (job.result) {
      const r = job.result;
      if (r.version !== undefined) lines.push(`trained version: ${r.version}${r.model ? ` (${r.model})` : ""}`);
      if (r.promoted !== undefined) lines.push(`promoted to champion: ${r.promoted ? "yes" : "no"}`);
      if (r.decision) lines.push(`decision: ${r.decision}`);
      if (r.seconds !== undefined) lines.push(`took: ${r.seconds} s`);
    }
    if (job.error) lines.push(`error: ${job.error}`);
    return lines.join("\n");
  }

  async function poll(url) {
    try {
      const job = await api("GET", url);
      const labels = { queued: "Queued\u2026", running: "Training\u2026 (this takes a few minutes)", succeeded: "Retrain finished.", failed: "Retrain failed." };
      $("job-status").textContent = labels[job.status] || job.status;
      $("job-detail").textContent = describeJob(job);
      if (job.status === "succeeded" || job.status === "failed") {
        pollTimer = null;
        $("retrain").disabled = false;
        if (job.status === "succeeded") await loadModels();
        return;
      }
    } catch (error) {
      $("job-status").textContent = `Could not read the job's status: ${error.message} (retrying)`;
    }
    pollTimer = setTimeout(() => poll(url), POLL_MS);
  }

  function setUpRetrain() {
    $("retrain").addEventListener("click", async () => {
      const key = currentKey();
      if (!key) return;
      hideAlert("models-error");
      const button = $("retrain");
      button.disabled = true;
      try {
        const started = await api("POST", "/v1/retrain", { key, body: {} });
        $("job").hidden = false;
        $("job-status").textContent = started.message || "Retrain started.";
        $("job-detail").textContent = `job ${started.job_id}`;
        if (pollTimer) clearTimeout(pollTimer);
        pollTimer = setTimeout(() => poll(started.status_url || `/v1/jobs/${encodeURIComponent(started.job_id)}`), POLL_MS);
      } catch (error) {
        onKeyError(error);
        showAlert("models-error", error.message);
        button.disabled = false;
      }
    });
  }

  setUpKey();
  setUpUpload();
  setUpRetrain();
  $("models-refresh").addEventListener("click", () => loadModels());
  loadModels().finally(() => {
    document.body.dataset.ready = "true";
  });
})();
