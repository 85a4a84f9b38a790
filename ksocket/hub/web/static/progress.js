// The snapshots page: refreshes the running discoveries' records so far from /api/progress.
"use strict";
(function () {
  const table = document.getElementById("running");
  if (!table) { return; }
  const url = table.dataset.progress;
  async function refresh() {
    let running;
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) { return; }
      running = await response.json();
    } catch (error) {
      return;
    }
    const ids = new Set(running.map((p) => p.id));
    for (const row of table.querySelectorAll("tbody tr[data-operation]")) {
      if (!ids.has(row.dataset.operation)) { window.location.reload(); return; }  // finished: a new snapshot
    }
    for (const p of running) {
      const row = table.querySelector(`tbody tr[data-operation="${CSS.escape(p.id)}"]`);
      if (!row) { window.location.reload(); return; }  // started since the page was drawn
      row.querySelector(".state").textContent = p.state;
      row.querySelector(".records").textContent = p.records;
      row.querySelector(".hosts").textContent = p.hosts;
    }
  }
  window.setInterval(refresh, 2000);
})();
