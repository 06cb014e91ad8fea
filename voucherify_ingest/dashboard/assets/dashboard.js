// voucherify-ingest dashboard: live overview (polls one HTML fragment), dead-letter actions
// (count, confirm, POST with the CSRF token). No library; served by the dashboard process.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function flash(text, bad) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = "flash" + (bad ? " bad" : "");
    box.hidden = false;
  }

  // -- overview: re-fetch the live fragment; keep the last one on an error -----------------
  const live = document.getElementById("live");
  if (live) {
    const every = parseInt(live.dataset.refreshMs, 10) || 2000;
    let busy = false;
    const tick = async function () {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const r = await fetch("/partials/overview", {credentials: "same-origin"});
        if (r.ok) {
          live.innerHTML = await r.text();
          document.getElementById("at").textContent = r.headers.get("X-Snapshot-At") || "";
          live.classList.remove("stale");
        } else { live.classList.add("stale"); }
      } catch (err) { live.classList.add("stale"); }
      busy = false;
    };
    setInterval(tick, every);
  }

  // -- dead letters: selection, confirm, actions --------------------------------------------
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('[data-testid="dlq-select"]').forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }

  function confirmStep(text) {
    return new Promise(function (resolve) {
      const modal = document.getElementById("modal");
      document.getElementById("modal-text").textContent = text;
      modal.hidden = false;
      const ok = document.getElementById("modal-confirm");
      const cancel = document.getElementById("modal-cancel");
      const done = function (answer) {
        modal.hidden = true;
        ok.onclick = cancel.onclick = null;
        resolve(answer);
      };
      ok.onclick = function () { done(true); };
      cancel.onclick = function () { done(false); };
    });
  }

  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body),
    });
    const data = await r.json().catch(function () { return {error: r.statusText}; });
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  async function act(button) {
    const action = button.dataset.action, scope = button.dataset.scope;
    const table = document.getElementById("dlq-table");
    const filter = table ? JSON.parse(table.dataset.filter || "{}") : {};
    let body, count, what;
    if (scope === "selected") {
      const ids = Array.from(document.querySelectorAll('[data-testid="dlq-select"]:checked'))
        .map(function (box) { return box.value; });
      if (!ids.length) { flash("Select some entries first.", true); return; }
      body = {ids: ids}; count = ids.length; what = "selected";
    } else if (scope === "one") {
      body = {ids: JSON.parse(button.parentElement.dataset.ids)}; count = 1; what = "this";
    } else {
      const q = new URLSearchParams(filter);
      q.set("for", action);
      const r = await fetch("/api/dead-letters/count?" + q, {credentials: "same-origin"});
      const data = await r.json();
      if (!r.ok) { flash(data.error || "count failed", true); return; }
      body = {filter: filter, seen_at: data.seen_at}; count = data.count; what = "matching";
      if (!count) { flash("Nothing matches this filter.", true); return; }
    }
    const filterText = Object.keys(filter).map(function (k) { return k + "=" + filter[k]; });
    const verb = action === "replay" ? "Replay " : "Purge (delete for good) ";
    const text = what === "this" ? verb + "this entry (" + body.ids[0] + ")?" :
      verb + count + " " + what + " entr" + (count === 1 ? "y" : "ies") +
      (what === "matching" ? " (" + (filterText.join(", ") || "no filter") + ")" : "") + "?";
    if (!(await confirmStep(text))) { flash("Cancelled; nothing was changed."); return; }
    try {
      const data = await post("/api/dead-letters/" + action, body);
      flash((action === "replay" ? "Replayed " : "Purged ") + data.count + " entries.");
      setTimeout(function () {
        location.href = scope === "one" ? "/dead-letters" : location.href;
      }, 600);
    } catch (err) { flash("Refused: " + err.message, true); }
  }

  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () { act(button); });
  });
})();
